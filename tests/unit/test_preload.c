// SPDX-License-Identifier: MIT
/* Tests for libuhmm-preload.so: an unmodified program run under LD_PRELOAD
 * has its mprotect/munmap/madvise delivered to a notifier before the change.
 * The program is this binary re-executed with --helper: it only calls libc;
 * the preload library's trace mode (UHMM_PRELOAD_TRACE) opens the mm. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <check.h>
#include <uhmm/mirror.h>
#include "t_util.h"

extern char **environ;

/* The unmodified program: map, write, mprotect, madvise, munmap. */
static int helper(void)
{
	size_t len = 4 * T_PAGE;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return 1;
	memset(p, 1, len);
	printf("%lx\n", (unsigned long)(uintptr_t)p);
	fflush(stdout);
	if (madvise(p + T_PAGE, T_PAGE, MADV_DONTNEED) || p[T_PAGE] != 0)
		return 2;
	if (mprotect(p, 2 * T_PAGE, PROT_READ))
		return 3;
	if (mprotect(p + 1, T_PAGE, PROT_READ) != -1 || errno != EINVAL)
		return 4;	/* errors still look like libc's */
	if (munmap(p, len))
		return 5;
	return 0;
}

static bool preload_path(char *out, size_t n)
{
	char exe[PATH_MAX + 32];
	ssize_t k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;

	if (k <= 0)
		return false;
	exe[k] = 0;
	slash = strrchr(exe, '/');
	if (!slash)
		return false;
	strcpy(slash, "/../libuhmm-preload.so");
	if (strlen(exe) >= n)
		return false;
	memcpy(out, exe, strlen(exe) + 1);
	return access(out, R_OK) == 0;
}

/* mprotect, madvise and munmap of an unmodified program reach the notifier
 * in order, each before the change (perms seen in the callback are the old
 * ones), and the mm is released at exit. */
START_TEST(preload_delivers_invalidations_before_change)
{
	char so[PATH_MAX], trace[] = "/tmp/uhmm-preload-XXXXXX", env1[PATH_MAX + 16],
	     env2[64], line[256], out[64] = "";
	char *argv[] = { "/proc/self/exe", "--helper", NULL };
	char *envp[] = { env1, env2, NULL };
	posix_spawn_file_actions_t fa;
	unsigned long a = 0, s, e;
	int fd, pipefd[2], st, ev;
	bool saw_clear = false, saw_prot = false, saw_unmap = false, saw_release = false;
	int order = 0, o_clear = 0, o_prot = 0, o_unmap = 0;
	char perms[8];
	pid_t pid;
	FILE *f;
	ssize_t n;

	if (!preload_path(so, sizeof(so))) {
		t_skip("libuhmm-preload.so not built next to this binary's directory");
		return;
	}
	fd = mkstemp(trace);
	ck_assert_int_ge(fd, 0);
	close(fd);
	snprintf(env1, sizeof(env1), "LD_PRELOAD=%s", so);
	snprintf(env2, sizeof(env2), "UHMM_PRELOAD_TRACE=%s", trace);
	ck_assert_int_eq(pipe(pipefd), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	posix_spawn_file_actions_addclose(&fa, pipefd[0]);
	ck_assert_int_eq(posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, envp), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	n = read(pipefd[0], out, sizeof(out) - 1);
	close(pipefd[0]);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "helper status %#x", st);
	ck_assert_int_gt(n, 0);
	ck_assert_int_eq(sscanf(out, "%lx", &a), 1);
	f = fopen(trace, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%d %lx %lx %7s", &ev, &s, &e, perms) != 4)
			continue;
		order++;
		if (ev == UHMM_EVENT_CLEAR && s == a + T_PAGE && e == a + 2 * T_PAGE) {
			saw_clear = true;
			o_clear = order;
		}
		if (ev == UHMM_EVENT_PROTECTION && s == a && e == a + 2 * T_PAGE) {
			ck_assert_str_eq(perms, "rw-p");	/* before the change */
			saw_prot = true;
			o_prot = order;
		}
		if (ev == UHMM_EVENT_UNMAP && s == a && e == a + 4 * T_PAGE) {
			ck_assert_str_eq(perms, "r--p");	/* still mapped */
			saw_unmap = true;
			o_unmap = order;
		}
		if (ev == UHMM_EVENT_RELEASE)
			saw_release = true;
	}
	fclose(f);
	unlink(trace);
	ck_assert(saw_clear && saw_prot && saw_unmap && saw_release);
	ck_assert(o_clear < o_prot && o_prot < o_unmap);
}
END_TEST

/* Without the trace variable the library is inert: the program runs normally. */
START_TEST(preload_without_trace_is_transparent)
{
	char so[PATH_MAX], env1[PATH_MAX + 16];
	char *argv[] = { "/proc/self/exe", "--helper", NULL };
	char *envp[] = { env1, NULL };
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int st;

	if (!preload_path(so, sizeof(so))) {
		t_skip("libuhmm-preload.so not built next to this binary's directory");
		return;
	}
	snprintf(env1, sizeof(env1), "LD_PRELOAD=%s", so);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	ck_assert_int_eq(posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, envp), 0);
	posix_spawn_file_actions_destroy(&fa);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
END_TEST

int main(int argc, char **argv)
{
	TCase *tc = tcase_create("preload");

	if (argc > 1 && !strcmp(argv[1], "--helper"))
		return helper();
	tcase_add_test(tc, preload_delivers_invalidations_before_change);
	tcase_add_test(tc, preload_without_trace_is_transparent);
	return t_run_suite("preload", tc, NULL);
}
