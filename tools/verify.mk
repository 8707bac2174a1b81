# tools/verify.mk — builds and installs the offline audit verifier (fintx-verify).
# Included by the top-level Makefile in PGXS mode. Placeholder until the program lands.
fintx-verify:
	@true
install-verify:
	@true
clean-verify:
	@true
.PHONY: install-verify clean-verify
