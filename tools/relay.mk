# tools/relay.mk — builds and installs fintx-relay, the outbox relay to NATS JetStream
# (tools/fintx-relay.c: C99, libpq and the NATS C client from libnats-dev; see docs/relay.md).
# Included by the top-level Makefile in PGXS mode, which adds
#   all: fintx-relay    install: install-relay    clean: clean-relay
# Built with its own flags, independent of the server build; libpq from pg_config's
# include and library directories.

FINTX_RELAY_CFLAGS ?= -std=c99 -O2 -g -Wall -Wextra -Werror -pthread
FINTX_RELAY_LIBS   ?= -L$(libdir) -lpq -lnats -pthread

fintx-relay: tools/fintx-relay.c
	$(CC) $(FINTX_RELAY_CFLAGS) -I$(includedir) -o $@ $< $(FINTX_RELAY_LIBS)

install-relay: fintx-relay
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) fintx-relay '$(DESTDIR)$(bindir)/fintx-relay'

uninstall-relay:
	rm -f '$(DESTDIR)$(bindir)/fintx-relay'

uninstall: uninstall-relay

clean-relay:
	rm -f fintx-relay

.PHONY: install-relay uninstall-relay clean-relay
