# tools/verify.mk — builds and installs the offline audit verifier, fintx-verify
# (tools/fintx-verify.c: C99, libcrypto and libc only; see docs/audit.md).
# Included by the top-level Makefile in PGXS mode, which adds
#   all: fintx-verify    install: install-verify    clean: clean-verify
# The program does not use PostgreSQL's headers or compiler flags: it is built with its own
# flags so that it stays warning-free and independent of the server build.

FINTX_VERIFY_CFLAGS ?= -std=c99 -O2 -g -Wall -Wextra -Werror
FINTX_VERIFY_LIBS   ?= -lcrypto

fintx-verify: tools/fintx-verify.c
	$(CC) $(FINTX_VERIFY_CFLAGS) -o $@ $< $(FINTX_VERIFY_LIBS)

# PGXS defines bindir as PostgreSQL's bin directory (pg_config --bindir)
install-verify: fintx-verify
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) fintx-verify '$(DESTDIR)$(bindir)/fintx-verify'

uninstall-verify:
	rm -f '$(DESTDIR)$(bindir)/fintx-verify'

uninstall: uninstall-verify

clean-verify:
	rm -f fintx-verify

.PHONY: install-verify uninstall-verify clean-verify
