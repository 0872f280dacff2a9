/* SPDX-License-Identifier: MIT */
/*
 * uhmm/common.h - definitions shared by every uhmm header: export marker,
 * version, extensible option structs and the logging hook.
 *
 * The library never prints on its own. Install a log function with
 * uhmm_set_log() to see warnings (UHMM_WARN_ON) and debug traces.
 */
#ifndef UHMM_COMMON_H
#define UHMM_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UHMM_VERSION_MAJOR 0
#define UHMM_VERSION_MINOR 1

#ifndef UHMM_API
#define UHMM_API __attribute__((visibility("default")))
#endif

#define UHMM_PAGE_SHIFT 12
#define UHMM_PAGE_SIZE (1UL << UHMM_PAGE_SHIFT)

/*
 * Declare an options struct with its size field filled in, libbpf style:
 *	UHMM_OPTS(mm_opts, o, .nr_handlers = 2);
 */
#define UHMM_OPTS(type, name, ...)                                          \
	struct uhmm_##type name = { .sz = sizeof(struct uhmm_##type),       \
				    __VA_ARGS__ }

enum uhmm_log_level {
	UHMM_LOG_ERROR = 0,
	UHMM_LOG_WARN = 1,
	UHMM_LOG_INFO = 2,
	UHMM_LOG_DEBUG = 3,
};

/* Called with a complete message, no trailing newline. May run on any thread. */
typedef void (*uhmm_log_fn)(enum uhmm_log_level level, const char *msg);

/**
 * uhmm_set_log() - install (or remove, with NULL) the library's log function
 * @fn: function receiving messages, or NULL for silence (the default)
 * @level: highest level delivered
 *
 * Context: any thread; takes effect for messages issued after it returns.
 */
UHMM_API void uhmm_set_log(uhmm_log_fn fn, enum uhmm_log_level level);

#ifdef __cplusplus
}
#endif
#endif
