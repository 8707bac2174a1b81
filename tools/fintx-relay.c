/*-------------------------------------------------------------------------
 * fintx-relay.c
 *	  Publishes fintx outbox events, in position order, to a NATS JetStream
 *	  stream, exactly one copy per event (see docs/relay.md).
 *
 * The relay is an ordinary outbox consumer (default name "fintx-relay").
 * For each batch from fintx.poll() it publishes every event asynchronously
 * with
 *	 Nats-Msg-Id                  the event id (broker-side deduplication)
 *	 Nats-Expected-Last-Sequence  the stream sequence the previous message got
 *	 Fintx-Position               the outbox position
 * waits for every PubAck and stores the last position and stream sequence
 * with fintx.relay_checkpoint() in one transaction. Expected-last-sequence
 * makes the stream refuse any message that does not directly follow what
 * the relay believes is the stream's end, so a stale or concurrent relay can
 * never append a second copy. After any error, and on start, the relay
 * reconciles: it reads the stream's last sequence and, if the stream is
 * ahead of PostgreSQL (killed after a PubAck, before the checkpoint), reads
 * the last message's Fintx-Position and checkpoints that. This does not
 * depend on the duplicate window.
 *
 * Waiting: LISTEN fintx_outbox (the sealing pass notifies) with a timeout,
 * no busy loop. Errors: exponential back-off with jitter, reconnect,
 * reconcile. A health line goes to stderr every --health-interval seconds.
 *-------------------------------------------------------------------------
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <nats/nats.h>

#define BACKOFF_MIN_MS	100
#define BACKOFF_MAX_MS	5000
#define IDLE_WAIT_MS	500
#define MAX_BATCH		10000	/* --batch's limit, and how far ahead of the outbox a stream may be */
#define STR(x)			#x
#define XSTR(x)			STR(x)

typedef struct Config
{
	const char *conninfo;
	const char *nats_url;
	const char *stream;
	const char *prefix;
	const char *consumer;
	int			batch;
	bool		once;
	bool		create_stream;
	int			health_s;
	int64_t		dup_window_ms;	/* duplicate window of a stream we create; 0: server default */
	bool		dump;
} Config;

/* PubAck bookkeeping of one batch, shared with the ack handler thread. */
typedef struct Acks
{
	pthread_mutex_t mu;
	int			ok;				/* acks with the expected sequence */
	int			failed;
	int64_t		max_position;
	uint64_t	max_sequence;
	char		error[256];
} Acks;

static Config cfg;
static PGconn *pg = NULL;
static natsConnection *nc = NULL;
static jsCtx *js = NULL;
static Acks acks;
static volatile sig_atomic_t stop = 0;
static bool fatal = false;		/* a condition retrying cannot fix: stop with exit status 1 */

/* Return value of a step that found a condition retrying cannot fix (logged already). */
static int
refuse(void)
{
	fatal = true;
	return -1;
}

/* state as last stored in PostgreSQL */
static int64_t committed = 0;
static uint64_t stream_seq = 0;
static int64_t tail = 0;
static long long published = 0;
static int64_t last_health = 0;
static const char *state = "starting";

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
logmsg(const char *fmt,...)
{
	va_list		ap;
	time_t		t = time(NULL);
	struct tm	tm;
	char		buf[32];

	gmtime_r(&t, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(stderr, "%s fintx-relay: ", buf);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
}

static bool pg_state(void);

/* The periodic health line. */
static void
health(bool force)
{
	int64_t		now = now_ms();

	if (!force && now - last_health < (int64_t) cfg.health_s * 1000)
		return;
	last_health = now;
	/* the tail is otherwise only read when reconciling: refresh it for the lag */
	if (!force && pg && PQstatus(pg) == CONNECTION_OK && PQtransactionStatus(pg) == PQTRANS_IDLE)
		(void) pg_state();
	logmsg("health state=%s published=%lld position=%" PRId64 " stream_seq=%" PRIu64
		   " tail=%" PRId64 " lag=%" PRId64 " pg=%s nats=%s",
		   state, published, committed, stream_seq, tail, tail > committed ? tail - committed : 0,
		   pg && PQstatus(pg) == CONNECTION_OK ? "up" : "down",
		   nc && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED ? "up" : "down");
}

static void
on_signal(int sig)
{
	(void) sig;
	stop = 1;
}

/* Sleeps ms milliseconds unless a stop is requested. */
static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000L};

	while (!stop && nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* ------------------------------------------------------------------------
 * PostgreSQL
 * ------------------------------------------------------------------------
 */

/*
 * Whether a failed query's SQLSTATE is one retrying cannot fix: a missing
 * privilege, function, table or schema, a consumer in the wrong state, or
 * invalid input such as an unknown consumer. Transient errors of the same
 * classes (55P03 lock_not_available, 55006 object_in_use, ...) are retried.
 */
static bool
pg_error_is_permanent(const PGresult *r)
{
	static const char *const permanent[] = {"42501", "42883", "42P01", "3F000", "55000", "22023", "22P02", "22004", NULL};
	const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);

	for (int i = 0; st != NULL && permanent[i] != NULL; i++)
		if (strcmp(st, permanent[i]) == 0)
			return true;
	return false;
}

static void
pg_close(void)
{
	if (pg)
		PQfinish(pg);
	pg = NULL;
}

/* Connects, LISTENs and makes sure the consumer exists; false on error. */
static bool
pg_connect(void)
{
	PGresult   *r;
	const char *params[1];

	if (pg && PQstatus(pg) == CONNECTION_OK)
		return true;
	pg_close();
	{
		/*
		 * Defaults first, the user's connection string (expanded) after them,
		 * so that it can override them: without timeouts and keepalives a
		 * network partition blocks a query for good, and SIGTERM with it.
		 */
		const char *keys[] = {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
		"tcp_user_timeout", "fallback_application_name", "connect_timeout", "dbname", NULL};
		const char *values[] = {"1", "10", "5", "3", "30000", "fintx-relay", "10", cfg.conninfo, NULL};

		/* PGCONNECT_TIMEOUT, when set, is the user's choice: leave connect_timeout to libpq */
		if (getenv("PGCONNECT_TIMEOUT") != NULL)
		{
			keys[6] = "dbname";
			values[6] = cfg.conninfo;
			keys[7] = NULL;
			values[7] = NULL;
		}
		pg = PQconnectdbParams(keys, values, 1);
	}
	if (PQstatus(pg) != CONNECTION_OK)
	{
		logmsg("could not connect to PostgreSQL: %s", PQerrorMessage(pg));
		pg_close();
		return false;
	}
	/*
	 * READ COMMITTED whatever the database's default: under REPEATABLE READ
	 * or SERIALIZABLE fintx cannot sequence the outbox, and where no worker
	 * does, --once would publish nothing.
	 */
	r = PQexec(pg, "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED; LISTEN fintx_outbox");
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
	{
		logmsg("LISTEN failed: %s", PQerrorMessage(pg));
		PQclear(r);
		pg_close();
		return false;
	}
	PQclear(r);
	params[0] = cfg.consumer;
	r = PQexecParams(pg, "SELECT fintx.create_consumer($1)", 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		logmsg("could not create consumer \"%s\": %s", cfg.consumer, PQerrorMessage(pg));
		if (pg_error_is_permanent(r))
			fatal = true;
		PQclear(r);
		pg_close();
		return false;
	}
	if (strcmp(PQgetvalue(r, 0, 0), "t") == 0)
		logmsg("created outbox consumer \"%s\"", cfg.consumer);
	PQclear(r);
	if (cfg.once)
	{
		/* --once: everything committed before now is sequenced, worker or not */
		r = PQexec(pg, "SELECT fintx.seal()");
		if (PQresultStatus(r) != PGRES_TUPLES_OK)
		{
			logmsg("could not seal: %s", PQerrorMessage(pg));
			PQclear(r);
			pg_close();
			return false;
		}
		PQclear(r);
	}
	return true;
}

/* Reads committed offset, stored stream sequence and tail; false on error. */
static bool
pg_state(void)
{
	const char *params[1] = {cfg.consumer};
	PGresult   *r = PQexecParams(pg, "SELECT committed_position, stream_sequence, tail_position"
								 "  FROM fintx.consumer_state($1)", 1, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
	{
		logmsg("could not read consumer state: %s", PQerrorMessage(pg));
		if (pg_error_is_permanent(r))
			fatal = true;
		PQclear(r);
		return false;
	}
	committed = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	stream_seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
	tail = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
	PQclear(r);
	return true;
}

/* Stores position and stream sequence; false on error. */
static bool
pg_checkpoint(int64_t position, uint64_t seq)
{
	char		p[32],
				s[32];
	const char *params[3] = {cfg.consumer, p, s};
	PGresult   *r;

	snprintf(p, sizeof(p), "%" PRId64, position);
	snprintf(s, sizeof(s), "%" PRIu64, seq);
	r = PQexecParams(pg, "SELECT fintx.relay_checkpoint($1, $2, $3)", 3, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		logmsg("could not store checkpoint (position %s, stream sequence %s): %s", p, s,
			   PQerrorMessage(pg));
		if (pg_error_is_permanent(r))
			fatal = true;
		PQclear(r);
		return false;
	}
	PQclear(r);
	committed = position;
	stream_seq = seq;
	return true;
}

/* Waits for a notification on fintx_outbox or the timeout. */
static void
pg_wait(int timeout_ms)
{
	int			sock = PQsocket(pg);
	fd_set		fds;
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
	PGnotify   *n;

	if (sock < 0)
		return;
	/* a notification libpq has already read (during the last query) means: poll now */
	PQconsumeInput(pg);
	if ((n = PQnotifies(pg)) != NULL)
	{
		do
			PQfreemem(n);
		while ((n = PQnotifies(pg)) != NULL);
		return;
	}
	FD_ZERO(&fds);
	FD_SET(sock, &fds);
	if (select(sock + 1, &fds, NULL, NULL, &tv) > 0)
		PQconsumeInput(pg);
	while ((n = PQnotifies(pg)) != NULL)
		PQfreemem(n);
}

/* ------------------------------------------------------------------------
 * NATS
 * ------------------------------------------------------------------------
 */

/*
 * The NATS URL(s) for a log line, without credentials: in each
 * comma-separated entry, everything before its last "@" (after the scheme,
 * if there is one) is replaced by three asterisks, as libnats splits it.
 */
static const char *
nats_url_for_log(void)
{
	static char buf[1024];
	const char *in = cfg.nats_url;
	size_t		n = 0;

	while (*in && n + 8 < sizeof(buf))
	{
		size_t		len = strcspn(in, ",");
		const char *scheme = NULL;
		const char *at = NULL;
		const char *host = in;

		/* a scheme is [A-Za-z][A-Za-z0-9+.-]*:// at the start of the entry, nowhere else */
		if (len > 0 && ((in[0] >= 'A' && in[0] <= 'Z') || (in[0] >= 'a' && in[0] <= 'z')))
		{
			size_t		i = 1;

			while (i < len && ((in[i] >= 'A' && in[i] <= 'Z') || (in[i] >= 'a' && in[i] <= 'z') ||
							   (in[i] >= '0' && in[i] <= '9') || in[i] == '+' || in[i] == '.' || in[i] == '-'))
				i++;
			if (i + 2 < len && in[i] == ':' && in[i + 1] == '/' && in[i + 2] == '/')
				scheme = in + i + 3;
		}
		for (size_t i = 0; i < len; i++)
			if (in[i] == '@')
				at = in + i;
		if (at != NULL)
		{
			size_t		keep = scheme != NULL && scheme <= at ? (size_t) (scheme - in) : 0;

			if (n + keep + 4 >= sizeof(buf))
				break;
			memcpy(buf + n, in, keep);
			n += keep;
			memcpy(buf + n, "***@", 4);
			n += 4;
			host = at + 1;
		}
		while (host < in + len && n + 2 < sizeof(buf))
			buf[n++] = *host++;
		in += len;
		if (*in == ',' && n + 2 < sizeof(buf))
			buf[n++] = *in++;
	}
	buf[n] = '\0';
	return buf;
}

static void
nats_close(void)
{
	if (js)
		jsCtx_Destroy(js);
	js = NULL;
	if (nc)
	{
		natsConnection_Close(nc);
		natsConnection_Destroy(nc);
	}
	nc = NULL;
}

/* PubAck handler (NATS thread): counts acks that carry the expected sequence. */
static void
on_ack(jsCtx *ctx, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	const char *pos = NULL;
	const char *exp = NULL;

	(void) ctx;
	(void) closure;
	natsMsgHeader_Get(msg, "Fintx-Position", &pos);
	natsMsgHeader_Get(msg, "Nats-Expected-Last-Sequence", &exp);
	pthread_mutex_lock(&acks.mu);
	if (pa != NULL && pos != NULL && exp != NULL && !pa->Duplicate &&
		pa->Sequence == strtoull(exp, NULL, 10) + 1)
	{
		int64_t		p = strtoll(pos, NULL, 10);

		acks.ok++;
		if (p > acks.max_position)
		{
			acks.max_position = p;
			acks.max_sequence = pa->Sequence;
		}
	}
	else
	{
		acks.failed++;
		if (acks.error[0] == '\0')
		{
			if (pae != NULL)
				snprintf(acks.error, sizeof(acks.error), "%s (error code %d)",
						 pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err), (int) pae->ErrCode);
			else if (pa != NULL && pa->Duplicate)
				snprintf(acks.error, sizeof(acks.error), "duplicate of sequence %" PRIu64, pa->Sequence);
			else
				snprintf(acks.error, sizeof(acks.error), "unexpected sequence %" PRIu64,
						 pa ? pa->Sequence : 0);
		}
	}
	pthread_mutex_unlock(&acks.mu);
	natsMsg_Destroy(msg);
}

/* Connects to NATS and makes sure the stream exists; false on error. */
static bool
nats_connect(void)
{
	natsOptions *opts = NULL;
	jsOptions	jo;
	natsStatus	s;
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;

	if (nc && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED && js)
		return true;
	nats_close();
	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = natsOptions_SetURL(opts, cfg.nats_url);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, 2000);
	if (s == NATS_OK)
		s = natsOptions_SetAllowReconnect(opts, false);	/* we reconnect and reconcile ourselves */
	if (s == NATS_OK)
		s = natsOptions_SetPingInterval(opts, 2000);
	if (s == NATS_OK)
		s = natsOptions_SetMaxPingsOut(opts, 2);
	if (s == NATS_OK)
		s = natsConnection_Connect(&nc, opts);
	natsOptions_Destroy(opts);
	if (s != NATS_OK)
	{
		logmsg("could not connect to NATS at %s: %s", nats_url_for_log(), natsStatus_GetText(s));
		nats_close();
		return false;
	}
	jsOptions_Init(&jo);
	jo.Wait = 5000;
	jo.PublishAsync.MaxPending = cfg.batch + 16;
	jo.PublishAsync.AckHandler = on_ack;
	s = natsConnection_JetStream(&js, nc, &jo);
	if (s == NATS_OK)
	{
		s = js_GetStreamInfo(&si, js, cfg.stream, NULL, &jerr);
		if (s == NATS_NOT_FOUND && cfg.create_stream)
		{
			jsStreamConfig sc;
			char		subj[256];
			const char *subjects[1] = {subj};

			snprintf(subj, sizeof(subj), "%s.>", cfg.prefix);
			jsStreamConfig_Init(&sc);
			sc.Name = cfg.stream;
			sc.Subjects = subjects;
			sc.SubjectsLen = 1;
			sc.Storage = js_FileStorage;
			sc.Duplicates = cfg.dup_window_ms * 1000000;	/* nanoseconds */
			s = js_AddStream(&si, js, &sc, NULL, &jerr);
			if (s == NATS_OK)
				logmsg("created stream %s for subjects %s", cfg.stream, subj);
		}
	}
	if (si)
		jsStreamInfo_Destroy(si);
	if (s == NATS_NOT_FOUND && !cfg.create_stream)
	{
		logmsg(cfg.dump ? "JetStream stream %s does not exist" :
			   "JetStream stream %s does not exist and --no-create-stream was given", cfg.stream);
		fatal = true;
		nats_close();
		return false;
	}
	if (s != NATS_OK)
	{
		logmsg("JetStream stream %s is not available: %s (error code %d)", cfg.stream,
			   natsStatus_GetText(s), (int) jerr);
		nats_close();
		return false;
	}
	return true;
}

/*
 * Brings PostgreSQL in line with the stream: if the stream holds messages
 * after the stored sequence, their last one names the position published
 * last; checkpoint it. Returns 0 on success, -1 on an error; fatal is set if
 * the stream is behind PostgreSQL (it lost messages) or holds foreign ones.
 */
static int
reconcile(void)
{
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;
	uint64_t	last;
	natsMsg    *m = NULL;
	const char *pos = NULL;
	const char *id = NULL;
	char		msg_id[64];
	int64_t		p;

	if (!pg_state())
		return -1;
	/*
	 * The consumer must receive every event (no filter or group, a role that
	 * sees every account): relay_checkpoint() refuses otherwise, so ask it
	 * now with the stored values, before anything is published.
	 */
	if (!pg_checkpoint(committed, stream_seq))
		return -1;
	s = js_GetStreamInfo(&si, js, cfg.stream, NULL, &jerr);
	if (s != NATS_OK)
	{
		logmsg("could not read stream %s: %s", cfg.stream, natsStatus_GetText(s));
		return -1;
	}
	last = si->State.LastSeq;
	jsStreamInfo_Destroy(si);
	if (last == stream_seq)
		return 0;
	if (last < stream_seq)
	{
		logmsg("stream %s ends at sequence %" PRIu64 " but sequence %" PRIu64
			   " was stored: the stream lost messages; refusing to continue", cfg.stream, last, stream_seq);
		return refuse();
	}
	s = js_GetMsg(&m, js, cfg.stream, last, NULL, &jerr);
	if (s != NATS_OK && jerr == JSNoMessageFoundErr)
	{
		/* deleted, or removed by the stream's limits: no retry brings it back */
		logmsg("message %" PRIu64 " of stream %s, the last one, is gone (deleted, or removed by the stream's "
			   "limits): which position it held cannot be known; refusing to continue", last, cfg.stream);
		return refuse();
	}
	if (s != NATS_OK)
	{
		logmsg("could not read message %" PRIu64 " of stream %s: %s", last, cfg.stream,
			   natsStatus_GetText(s));
		return -1;
	}
	if (natsMsgHeader_Get(m, "Fintx-Position", &pos) != NATS_OK || pos == NULL)
	{
		logmsg("message %" PRIu64 " of stream %s has no Fintx-Position header: the stream is not "
			   "fintx-relay's alone; refusing to continue", last, cfg.stream);
		natsMsg_Destroy(m);
		return refuse();
	}
	p = strtoll(pos, NULL, 10);
	if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) != NATS_OK || id == NULL)
		id = "";
	snprintf(msg_id, sizeof(msg_id), "%s", id);
	natsMsg_Destroy(m);
	if (p > tail)
	{
		logmsg("message %" PRIu64 " of stream %s carries position %" PRId64 ", beyond the outbox's tail %"
			   PRId64 ": the stream belongs to another outbox; refusing to continue", last, cfg.stream, p, tail);
		return refuse();
	}
	if (p <= committed)
	{
		logmsg("message %" PRIu64 " of stream %s carries position %" PRId64 ", not after the committed %"
			   PRId64 " (stored stream sequence %" PRIu64 "): another relay or outbox appended to the stream; "
			   "refusing to continue", last, cfg.stream, p, committed, stream_seq);
		return refuse();
	}
	/*
	 * The messages after the stored sequence hold positions p - (last - S) + 1
	 * .. p; the first of them must not lie beyond the committed offset + 1 (a
	 * gap). Lying before it is fine: the offset was moved forward by hand
	 * (ack()) after they were published.
	 */
	if ((uint64_t) (p - committed) > last - stream_seq)
	{
		logmsg("stream %s holds %" PRIu64 " messages after the stored sequence %" PRIu64 " but its last one "
			   "carries position %" PRId64 ", %" PRId64 " after the committed %" PRId64 ": positions between "
			   "were never published; refusing to continue", cfg.stream, last - stream_seq, stream_seq, p,
			   p - committed, committed);
		return refuse();
	}
	if (p - committed > MAX_BATCH)
	{
		logmsg("message %" PRIu64 " of stream %s carries position %" PRId64 ", %" PRId64 " after the committed %"
			   PRId64 "; a relay is never more than one batch ahead: refusing to continue",
			   last, cfg.stream, p, p - committed, committed);
		return refuse();
	}
	/* the message must be this outbox's event at that position, not another one's */
	{
		char		n[16],
					q[32];
		const char *params[3] = {cfg.consumer, n, q};
		PGresult   *r;
		bool		same;

		snprintf(n, sizeof(n), "%" PRId64, p - committed);
		snprintf(q, sizeof(q), "%" PRId64, p);
		r = PQexecParams(pg, "SELECT id FROM fintx.poll($1, $2::int) WHERE position = $3::bigint",
						 3, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK)
		{
			logmsg("could not read the event at position %s: %s", q, PQerrorMessage(pg));
			if (pg_error_is_permanent(r))
				fatal = true;
			PQclear(r);
			return -1;
		}
		same = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), msg_id) == 0;
		if (!same)
			logmsg("message %" PRIu64 " of stream %s carries position %" PRId64 " with Nats-Msg-Id \"%s\", but "
				   "the outbox's event at that position is \"%s\": the stream belongs to another outbox or "
				   "history; refusing to continue", last, cfg.stream, p, msg_id,
				   PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "(none)");
		PQclear(r);
		if (!same)
			return refuse();
	}
	logmsg("reconciled: stream %s is at sequence %" PRIu64 " (position %" PRId64
		   "), PostgreSQL had sequence %" PRIu64 " (position %" PRId64 ")",
		   cfg.stream, last, p, stream_seq, committed);
	if (!pg_checkpoint(p, last))
		return -1;
	return 0;
}

/* Makes a NATS subject token of s: characters NATS does not allow become '_'. */
static void
append_token(char *out, size_t outlen, const char *s)
{
	size_t		n = strlen(out);

	for (; *s && n + 1 < outlen; s++)
	{
		unsigned char c = (unsigned char) *s;

		out[n++] = (c <= ' ' || c == '*' || c == '>' || c == 0x7f) ? '_' : (char) c;
	}
	out[n] = '\0';
}

/*
 * Publishes one batch and checkpoints it. Returns the number of events
 * published (0: none available), or -1 on an error (fatal set if retrying cannot fix it).
 */
static int
relay_batch(void)
{
	char		bs[16];
	const char *params[2] = {cfg.consumer, bs};
	PGresult   *r;
	int			n;
	jsPubOptions po;
	natsStatus	s;

	snprintf(bs, sizeof(bs), "%d", cfg.batch);
	r = PQexecParams(pg, "SELECT position, id, aggregatetype, aggregateid, type, payload::text, headers::text"
					 "  FROM fintx.poll($1, $2::int)", 2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		logmsg("poll failed: %s", PQerrorMessage(pg));
		if (pg_error_is_permanent(r))
			fatal = true;
		PQclear(r);
		return -1;
	}
	n = PQntuples(r);
	if (n == 0)
	{
		int64_t		before = committed;

		PQclear(r);
		/*
		 * poll() moves the offset past a window that held nothing for the
		 * consumer (a dead letter recorded meanwhile): for a relay that is an
		 * event skipped, not an empty outbox.
		 */
		if (!pg_state())
			return -1;
		if (committed != before)
		{
			logmsg("the offset of consumer \"%s\" moved from %" PRId64 " to %" PRId64 " without a publish "
				   "(poll() skipped what it could not return: a dead letter?); refusing to continue",
				   cfg.consumer, before, committed);
			return refuse();
		}
		return 0;				/* pg_state() read the tail too */
	}

	/*
	 * Before anything is published: the batch must be the positions right
	 * after the committed one (a consumer that does not receive every event
	 * would leave gaps, and the checkpoint would skip them), and each message
	 * must fit the server's max_payload, headers included (NATS counts both;
	 * retrying a message the server refuses would go on forever).
	 */
	for (int i = 0; i < n; i++)
	{
		static const int hcols[] = {1, -1, 0, 2, 3, 4, 6};	/* the header values' columns; -1: the sequence */
		static const char *const hnames[] = {"Nats-Msg-Id", "Nats-Expected-Last-Sequence", "Fintx-Position",
		"Fintx-Aggregate-Type", "Fintx-Aggregate-Id", "Fintx-Type", "Fintx-Headers"};
		int64_t		pos = strtoll(PQgetvalue(r, i, 0), NULL, 10);
		int64_t		size = (int64_t) PQgetlength(r, i, 5) + 12;	/* "NATS/1.0\r\n" ... "\r\n" */

		if (pos != committed + 1 + i)
		{
			logmsg("poll() returned position %" PRId64 " where %" PRId64 " was expected: the consumer does not "
				   "receive every event (a filter, a dead letter or the role's grants); refusing to publish",
				   pos, committed + 1 + i);
			PQclear(r);
			return refuse();
		}
		char		seqbuf[32];

		snprintf(seqbuf, sizeof(seqbuf), "%" PRIu64, stream_seq + (uint64_t) i);
		for (int h = 0; h < 7; h++)
			size += (int64_t) strlen(hnames[h]) + 4 + (hcols[h] < 0 ? (int64_t) strlen(seqbuf) : PQgetlength(r, i, hcols[h]));
		if (size > natsConnection_GetMaxPayload(nc))
		{
			logmsg("the event at position %s (id %s, %d bytes of payload, about %" PRId64 " bytes with its "
				   "headers) is larger than the NATS server's max_payload of %" PRId64 " bytes; raise "
				   "max_payload in the server's configuration (the relay never skips an event)",
				   PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetlength(r, i, 5), size,
				   natsConnection_GetMaxPayload(nc));
			PQclear(r);
			return refuse();
		}
	}

	pthread_mutex_lock(&acks.mu);
	acks.ok = acks.failed = 0;
	acks.max_position = 0;
	acks.max_sequence = 0;
	acks.error[0] = '\0';
	pthread_mutex_unlock(&acks.mu);

	for (int i = 0; i < n; i++)
	{
		natsMsg    *m = NULL;
		char		subj[512];
		char		exp[32];
		const char *payload = PQgetvalue(r, i, 5);

		snprintf(subj, sizeof(subj), "%s.", cfg.prefix);
		append_token(subj, sizeof(subj), PQgetvalue(r, i, 2));
		strncat(subj, ".", sizeof(subj) - strlen(subj) - 1);
		append_token(subj, sizeof(subj), PQgetvalue(r, i, 4));
		snprintf(exp, sizeof(exp), "%" PRIu64, stream_seq + (uint64_t) i);
		s = natsMsg_Create(&m, subj, NULL, payload, (int) strlen(payload));
		if (s == NATS_OK)
			s = natsMsgHeader_Set(m, "Nats-Msg-Id", PQgetvalue(r, i, 1));
		if (s == NATS_OK)
			s = natsMsgHeader_Set(m, "Nats-Expected-Last-Sequence", exp);
		if (s == NATS_OK)
			s = natsMsgHeader_Set(m, "Fintx-Position", PQgetvalue(r, i, 0));
		if (s == NATS_OK)
			s = natsMsgHeader_Set(m, "Fintx-Aggregate-Type", PQgetvalue(r, i, 2));
		if (s == NATS_OK)
			s = natsMsgHeader_Set(m, "Fintx-Aggregate-Id", PQgetvalue(r, i, 3));
		if (s == NATS_OK)
			s = natsMsgHeader_Set(m, "Fintx-Type", PQgetvalue(r, i, 4));
		if (s == NATS_OK)
			s = natsMsgHeader_Set(m, "Fintx-Headers", PQgetvalue(r, i, 6));
		if (s == NATS_OK)
			s = js_PublishMsgAsync(js, &m, NULL);
		natsMsg_Destroy(m);
		if (s == NATS_MAX_PAYLOAD)
		{
			/* the server's limit changed since the check above (a reconnect to another server) */
			logmsg("the event at position %s (id %s) is larger than the NATS server's max_payload of %" PRId64
				   " bytes; raise max_payload (the relay never skips an event)", PQgetvalue(r, i, 0),
				   PQgetvalue(r, i, 1), natsConnection_GetMaxPayload(nc));
			fatal = true;
		}
		if (s != NATS_OK)
		{
			logmsg("publish failed at position %s: %s", PQgetvalue(r, i, 0), natsStatus_GetText(s));
			break;
		}
	}
	PQclear(r);
	jsPubOptions_Init(&po);
	po.MaxWait = 10000;
	if (js_PublishAsyncComplete(js, &po) != NATS_OK)
	{
		natsMsgList pending = {0};

		if (js_PublishAsyncGetPendingList(&pending, js) == NATS_OK)
			natsMsgList_Destroy(&pending);
		logmsg("timed out waiting for PubAcks");
		return -1;
	}
	pthread_mutex_lock(&acks.mu);
	if (acks.ok != n || s != NATS_OK)
	{
		logmsg("%d of %d messages not stored: %s", n - acks.ok, n, acks.error[0] ? acks.error : "publish failed");
		pthread_mutex_unlock(&acks.mu);
		return -1;
	}
	pthread_mutex_unlock(&acks.mu);
	/* fault injection for the tests: widen the window between PubAck and checkpoint */
	if (getenv("FINTX_RELAY_TEST_ACK_PAUSE_MS"))
		sleep_ms(atoi(getenv("FINTX_RELAY_TEST_ACK_PAUSE_MS")));
	if (!pg_checkpoint(acks.max_position, acks.max_sequence))
		return -1;
	published += n;
	if (tail < committed)
		tail = committed;
	return n;
}

/*
 * --dump-stream: prints "sequence<TAB>Nats-Msg-Id<TAB>Fintx-Position<TAB>subject"
 * for every message of the stream, to compare it with the outbox.
 */
static int
dump_stream(void)
{
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;
	uint64_t	first,
				last;

	if (!nats_connect())
		return 1;
	s = js_GetStreamInfo(&si, js, cfg.stream, NULL, &jerr);
	if (s != NATS_OK)
	{
		logmsg("could not read stream %s: %s", cfg.stream, natsStatus_GetText(s));
		return 1;
	}
	first = si->State.FirstSeq;
	last = si->State.LastSeq;
	jsStreamInfo_Destroy(si);
	for (uint64_t q = first; q >= 1 && q <= last; q++)
	{
		natsMsg    *m = NULL;
		const char *id = NULL;
		const char *pos = NULL;

		s = js_GetMsg(&m, js, cfg.stream, q, NULL, &jerr);
		if (s != NATS_OK)
		{
			logmsg("could not read message %" PRIu64 ": %s", q, natsStatus_GetText(s));
			return 1;
		}
		natsMsgHeader_Get(m, "Nats-Msg-Id", &id);
		natsMsgHeader_Get(m, "Fintx-Position", &pos);
		printf("%" PRIu64 "\t%s\t%s\t%s\n", q, id ? id : "", pos ? pos : "", natsMsg_GetSubject(m));
		natsMsg_Destroy(m);
	}
	fflush(stdout);
	nats_close();
	return 0;
}

/* A whole decimal number within [min, max] in *out, or false (empty, trailing characters, out of range). */
static bool
parse_number(const char *s, int64_t min, int64_t max, int64_t *out)
{
	char	   *end;
	long long	v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (s[0] == '\0' || *end != '\0' || errno != 0 || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static void
usage(void)
{
	fprintf(stderr,
			"Usage: fintx-relay [options]\n"
			"Publishes fintx outbox events to a NATS JetStream stream, exactly once, in order.\n\n"
			"  -d, --dbname=CONNINFO       PostgreSQL connection string   (FINTX_RELAY_PG, default \"\": libpq defaults)\n"
			"  -s, --nats=URL              NATS server URL                (NATS_URL, default nats://127.0.0.1:4222)\n"
			"  -S, --stream=NAME           JetStream stream               (FINTX_RELAY_STREAM, default FINTX)\n"
			"  -p, --subject-prefix=PREFIX subjects PREFIX.<aggregatetype>.<type> (FINTX_RELAY_PREFIX, default fintx)\n"
			"  -c, --consumer=NAME         outbox consumer name           (FINTX_RELAY_CONSUMER, default fintx-relay)\n"
			"  -b, --batch=N               events per batch, 1-" XSTR(MAX_BATCH) "      (FINTX_RELAY_BATCH, default 1000)\n"
			"  -1, --once                  publish what is available, then exit (0 ok, 1 error; 2: invalid arguments)\n"
			"      --no-create-stream      fail instead of creating a missing stream\n"
			"      --duplicate-window=MS   duplicate window of a stream fintx-relay creates (default: server's, 2 min)\n"
			"      --health-interval=SECS  seconds between health lines on stderr, 1-86400 (default 10)\n"
			"      --dump-stream           print sequence, Nats-Msg-Id, Fintx-Position and subject of every\n"
			"                              message in the stream, then exit\n");
}

static const char *
env_or(const char *name, const char *def)
{
	const char *v = getenv(name);

	return v && v[0] ? v : def;
}

int
main(int argc, char **argv)
{
	static struct option longopts[] = {
		{"dbname", required_argument, NULL, 'd'},
		{"nats", required_argument, NULL, 's'},
		{"stream", required_argument, NULL, 'S'},
		{"subject-prefix", required_argument, NULL, 'p'},
		{"consumer", required_argument, NULL, 'c'},
		{"batch", required_argument, NULL, 'b'},
		{"once", no_argument, NULL, '1'},
		{"no-create-stream", no_argument, NULL, 'N'},
		{"health-interval", required_argument, NULL, 'H'},
		{"duplicate-window", required_argument, NULL, 'W'},
		{"dump-stream", no_argument, NULL, 'D'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	int			c;
	int			attempt = 0;
	bool		need_reconcile = true;
	const char *batch_text;
	const char *health_text = "10";
	const char *window_text = NULL;
	int64_t		number = 0;
	bool		ok;

	cfg.conninfo = env_or("FINTX_RELAY_PG", "");
	cfg.nats_url = env_or("NATS_URL", "nats://127.0.0.1:4222");
	cfg.stream = env_or("FINTX_RELAY_STREAM", "FINTX");
	cfg.prefix = env_or("FINTX_RELAY_PREFIX", "fintx");
	cfg.consumer = env_or("FINTX_RELAY_CONSUMER", "fintx-relay");
	batch_text = env_or("FINTX_RELAY_BATCH", "1000");
	cfg.create_stream = true;
	while ((c = getopt_long(argc, argv, "d:s:S:p:c:b:1h", longopts, NULL)) != -1)
	{
		switch (c)
		{
			case 'd': cfg.conninfo = optarg; break;
			case 's': cfg.nats_url = optarg; break;
			case 'S': cfg.stream = optarg; break;
			case 'p': cfg.prefix = optarg; break;
			case 'c': cfg.consumer = optarg; break;
			case 'b': batch_text = optarg; break;
			case '1': cfg.once = true; break;
			case 'N': cfg.create_stream = false; break;
			case 'H': health_text = optarg; break;
			case 'W': window_text = optarg; break;
			case 'D': cfg.dump = true; break;
			case 'h': usage(); return 0;
			default: usage(); return 2;
		}
	}
	/*
	 * Whole numbers only ("2min" is not 2 ms); the duplicate window is sent
	 * in nanoseconds: at most a week keeps it far from overflowing.
	 */
	ok = parse_number(batch_text, 1, MAX_BATCH, &number);
	cfg.batch = (int) number;
	ok = ok && parse_number(health_text, 1, 24 * 3600, &number);
	cfg.health_s = (int) number;
	ok = ok && (window_text == NULL ||
				parse_number(window_text, 0, INT64_C(7) * 24 * 3600 * 1000, &cfg.dup_window_ms));
	if (!ok || optind < argc)
	{
		fprintf(stderr, "fintx-relay: invalid arguments (numbers are whole milliseconds, seconds or counts)\n");
		usage();
		return 2;
	}
	if (cfg.dump)
	{
		cfg.create_stream = false;	/* reading creates nothing (a stream with the default subjects would catch the relay's) */
		return dump_stream();
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	pthread_mutex_init(&acks.mu, NULL);
	srand((unsigned) (time(NULL) ^ getpid()));
	logmsg("starting: stream %s, subjects %s.>, consumer \"%s\", batch %d%s", cfg.stream, cfg.prefix,
		   cfg.consumer, cfg.batch, cfg.once ? ", once" : "");

	while (!stop)
	{
		int			n;

		health(false);
		if (!pg_connect() || !nats_connect())
			n = -1;
		else if (need_reconcile)
		{
			n = reconcile();
			if (n == 0)
			{
				need_reconcile = false;
				state = "running";
				continue;
			}
		}
		else
			n = relay_batch();

		if (fatal)
		{
			state = "stopped";
			health(true);
			return 1;
		}
		if (n < 0)
		{
			int			wait;

			state = "backing-off";
			need_reconcile = true;
			if (cfg.once)
			{
				health(true);
				return 1;
			}
			if (pg && PQstatus(pg) != CONNECTION_OK)
				pg_close();
			if (nc && natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED)
				nats_close();
			/* exponential back-off with full jitter in [base/2, base] */
			wait = BACKOFF_MIN_MS << (attempt < 6 ? attempt : 6);
			if (wait > BACKOFF_MAX_MS)
				wait = BACKOFF_MAX_MS;
			wait = wait / 2 + rand() % (wait / 2 + 1);
			attempt++;
			sleep_ms(wait);
			continue;
		}
		attempt = 0;
		state = "running";
		if (n == 0)
		{
			if (cfg.once)
				break;
			pg_wait(IDLE_WAIT_MS);
		}
	}
	if (pg && PQstatus(pg) == CONNECTION_OK)
		(void) pg_state();
	state = "done";
	health(true);
	nats_close();
	pg_close();
	nats_Close();
	/* --once stopped by a signal before it was done: not a success */
	return cfg.once && stop ? 1 : 0;
}
