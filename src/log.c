// SPDX-License-Identifier: MIT
/* log.c - the library's only output path: a caller-installed log hook.
 * API in include/uhmm/common.h. */
#include <stdarg.h>
#include <stdio.h>
#include "internal.h"

static _Atomic(uhmm_log_fn) log_fn;
static _Atomic int log_level = UHMM_LOG_WARN;

void uhmm_set_log(uhmm_log_fn fn, enum uhmm_log_level level)
{
	log_level = (int)level;
	log_fn = fn;
}

void uhmm_log(enum uhmm_log_level level, const char *fmt, ...)
{
	uhmm_log_fn fn = log_fn;
	char buf[512];
	va_list ap;

	if (!fn || (int)level > log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fn(level, buf);
}

bool uhmm_warn_once(bool cond, bool *done, const char *file, int line,
		    const char *expr)
{
	if (cond && !__atomic_exchange_n(done, true, __ATOMIC_RELAXED))
		uhmm_log(UHMM_LOG_WARN, "WARN_ON(%s) at %s:%d", expr, file, line);
	return cond;
}
