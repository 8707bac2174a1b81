# fintx — PGXS build. `make check` and `make demo` bootstrap a fresh Debian 12 machine
# (apt-get as root), build, install and run against a throwaway cluster.

EXTENSION  = fintx
EXTVERSION = 0.1.0

MODULE_big = fintx
OBJS       = src/fintx.o src/crypto.o src/idempotency.o src/ledger.o src/worker.o \
             src/merkle.o src/audit.o src/sequencer.o src/verify.o src/authz.o src/denials.o src/outbox.o src/direct.o src/gate.o

# SQL beside each module, assembled in dependency order into the install script.
SQL_PARTS  = src/schema.sql src/currency.sql src/ledger.sql src/idempotency.sql \
             src/reconcile.sql src/audit.sql src/authz.sql src/outbox.sql src/privileges.sql
DATA_built = $(EXTENSION)--$(EXTVERSION).sql

REGRESS      = setup accounts transfer idempotency pending batch reconcile audit authorization security outbox
REGRESS_OPTS = --inputdir=. --dbname=fintx_regress

PG_CPPFLAGS = -I$(srcdir)/src -Wall -Wextra -Werror -Wno-unused-parameter \
              -Wno-missing-field-initializers
SHLIB_LINK  = -lcrypto
EXTRA_CLEAN = $(DATA_built) results regression.diffs regression.out test_results.json \
              coverage coverage.info src/*.gcda src/*.gcno

override with_llvm = no
PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)

# Targets that drive the whole run; they must work before pg_config exists.
DRIVER_GOALS = check demo coverage bootstrap bench valgrind
ifneq ($(filter $(DRIVER_GOALS),$(MAKECMDGOALS)),)

.PHONY: $(DRIVER_GOALS) check-reset
bootstrap:
	@test/scripts/bootstrap.sh
# the old result must not outlive a bootstrap or build failure
check: check-reset bootstrap
	@$(MAKE) --no-print-directory all install
	@test/scripts/check.sh
check-reset:
	@rm -f test_results.json
demo: bootstrap
	@$(MAKE) --no-print-directory all install
	@test/scripts/demo.sh
coverage: check-reset bootstrap
	@$(MAKE) --no-print-directory clean
	@$(MAKE) --no-print-directory all install PG_CFLAGS="-O0 -fprofile-arcs -ftest-coverage" \
	    SHLIB_LINK="-lcrypto -lgcov"
	@FINTX_COVERAGE=1 test/scripts/check.sh; status=$$?; \
	  test/scripts/coverage.sh; \
	  rm -f $(OBJS) fintx.so; \
	  $(MAKE) --no-print-directory all install >/dev/null; exit $$status
bench: bootstrap
	@$(MAKE) --no-print-directory all install
	@test/bench/run.sh
valgrind: bootstrap
	@$(MAKE) --no-print-directory all install
	@test/scripts/valgrind.sh

else

PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
else
all install installcheck clean:
	@echo "pg_config not found: run 'make check' (it installs PostgreSQL 15) or set PG_CONFIG" >&2
	@exit 1
endif

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_PARTS)
	cat $^ > $@

# every module sees the shared structs (FintxTable is allocated by its callers)
$(OBJS): src/fintx.h src/merkle.h

# the offline audit verifier, a standalone program (libcrypto only)
include tools/verify.mk
all: fintx-verify
install: install-verify
clean: clean-verify

# the outbox relay to NATS JetStream (libpq, libnats)
include tools/relay.mk
all: fintx-relay
install: install-relay
clean: clean-relay

endif
