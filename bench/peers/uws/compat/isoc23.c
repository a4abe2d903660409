/* The C23 entry points that the prebuilt uWebSockets.js addon takes from glibc 2.38
 * (objdump -T uws_*.node | grep GLIBC_2.38), for an older glibc: preloaded into the server
 * by bench/servers/uws.sh. Each forwards to the classic function. They differ only in C23's
 * "0b" binary prefix (strto* in base 0 or 2, scanf's %i and %b), which nothing uWS parses
 * uses: its numbers are decimal or hexadecimal. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

long __isoc23_strtol(const char *s, char **end, int base) { return strtol(s, end, base); }

unsigned long __isoc23_strtoul(const char *s, char **end, int base) {
  return strtoul(s, end, base);
}

int __isoc23_sscanf(const char *s, const char *format, ...) {
  va_list args;
  va_start(args, format);
  int n = vsscanf(s, format, args);
  va_end(args);
  return n;
}
