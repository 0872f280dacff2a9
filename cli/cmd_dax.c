// SPDX-License-Identifier: MIT
/* cmd_dax.c - `uhmm dax`: create regions, list them as JSON (like
 * `daxctl list -R -D`), create/destroy/resize/reconfigure/enable/disable
 * devices. A region is named by its backing path (-r PATH). */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uhmm/dax.h>
#include "cli.h"

static void dax_usage(FILE *f)
{
	fprintf(f,
		"usage: uhmm dax <subcommand> [options]\n"
		"  create-region -r PATH -s SIZE [-a ALIGN]   format PATH as a region\n"
		"  list -r PATH [-r PATH ...]                 regions and devices as JSON\n"
		"  create-device -r PATH -s SIZE [-a ALIGN]   size the seed, enable it\n"
		"  destroy-device -r PATH DEV\n"
		"  resize-device -r PATH -s SIZE DEV\n"
		"  reconfigure-device -r PATH -m kmem|devdax DEV\n"
		"  enable-device -r PATH DEV\n"
		"  disable-device -r PATH DEV\n"
		"SIZE and ALIGN take K, M, G, T suffixes (2G, 512M); DEV is daxR.N or N.\n"
		"Ranges in JSON are [start, end] offsets in the region, end inclusive.\n");
}

/* "2G", "512M", "4096", "0x1000" -> bytes; -1 on junk or overflow. */
static int parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	char *end;
	int shift = 0;

	/* digits first: strtoull would skip blanks and accept a sign */
	if (!s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s)
		return -1;
	switch (*end) {
	case 'k': case 'K': shift = 10; break;
	case 'm': case 'M': shift = 20; break;
	case 'g': case 'G': shift = 30; break;
	case 't': case 'T': shift = 40; break;
	case 0: break;
	default: return -1;
	}
	if (*end && end[1] && strcmp(end + 1, "iB") && strcmp(end + 1, "B"))
		return -1;
	if (shift && v > (UINT64_MAX >> shift))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

static json_object *dev_json(struct uhmm_dax_dev *d)
{
	struct uhmm_dax_dev_info di;
	struct uhmm_dax_range *rg;
	json_object *o, *arr;
	int n;

	if (uhmm_dax_dev_info(d, &di))
		return NULL;
	o = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(di.name));
	json_object_object_add(o, "id", json_object_new_int64(di.id));
	json_object_object_add(o, "size", json_object_new_int64((int64_t)di.size));
	json_object_object_add(o, "align", json_object_new_int64((int64_t)di.align));
	json_object_object_add(o, "mode", json_object_new_string(
		di.mode == UHMM_DAX_MODE_KMEM ? "kmem" : "devdax"));
	json_object_object_add(o, "state", json_object_new_string(
		di.flags & UHMM_DAX_DEV_ENABLED ? "enabled" : "disabled"));
	arr = json_object_new_array();
	rg = calloc(di.nr_range + 1, sizeof(*rg));
	n = rg ? uhmm_dax_dev_ranges(d, rg, di.nr_range) : 0;
	for (int i = 0; i < n && i < (int)di.nr_range; i++) {
		json_object *r = json_object_new_object();

		json_object_object_add(r, "start", json_object_new_int64((int64_t)rg[i].start));
		json_object_object_add(r, "end", json_object_new_int64((int64_t)rg[i].end - 1));
		json_object_array_add(arr, r);
	}
	free(rg);
	json_object_object_add(o, "ranges", arr);
	return o;
}

static int region_json(const char *path, struct uhmm_dax_region *r, json_object **out)
{
	struct uhmm_dax_region_info info;
	struct uhmm_dax_dev **devs;
	json_object *o, *arr;
	char seed[UHMM_DAX_NAME_MAX];
	int n, ret;

	ret = uhmm_dax_region_info(r, &info);
	if (ret)
		return ret;
	devs = calloc(UHMM_DAX_MAX_DEVICES, sizeof(*devs));
	if (!devs)
		return -ENOMEM;
	n = uhmm_dax_region_devices(r, devs, UHMM_DAX_MAX_DEVICES);
	if (n < 0) {
		free(devs);
		return n;
	}
	o = json_object_new_object();
	snprintf(seed, sizeof(seed), "dax%u.%u", info.id, info.seed_id);
	json_object_object_add(o, "path", json_object_new_string(path));
	json_object_object_add(o, "id", json_object_new_int64(info.id));
	json_object_object_add(o, "size", json_object_new_int64((int64_t)info.size));
	json_object_object_add(o, "available_size", json_object_new_int64((int64_t)info.available));
	json_object_object_add(o, "align", json_object_new_int64((int64_t)info.align));
	json_object_object_add(o, "seed", json_object_new_string(seed));
	json_object_object_add(o, "persistent", json_object_new_boolean(info.persistent));
	arr = json_object_new_array();
	for (int i = 0; i < n && i < UHMM_DAX_MAX_DEVICES; i++) {
		json_object *d = dev_json(devs[i]);

		if (d)
			json_object_array_add(arr, d);
	}
	json_object_object_add(o, "devices", arr);
	free(devs);
	*out = o;
	return 0;
}

static void print_json(json_object *o)
{
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
	json_object_put(o);
}

struct dax_args {
	const char *regions[16];
	int nr_regions;
	uint64_t size, align;
	bool has_size, has_align;
	const char *mode;
	const char *dev;
};

static int parse_args(const char *cmd, int argc, char **argv, struct dax_args *a)
{
	static const struct option lo[] = {
		{ "region", required_argument, NULL, 'r' },
		{ "size", required_argument, NULL, 's' },
		{ "align", required_argument, NULL, 'a' },
		{ "mode", required_argument, NULL, 'm' },
		{ "human", no_argument, NULL, 'u' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	memset(a, 0, sizeof(*a));
	optind = 1;
	while ((c = getopt_long(argc, argv, "r:s:a:m:uh", lo, NULL)) != -1) {
		switch (c) {
		case 'r':
			if (a->nr_regions == 16)
				return CLI_USAGE;
			a->regions[a->nr_regions++] = optarg;
			break;
		case 's':
			if (parse_size(optarg, &a->size)) {
				fprintf(stderr, "uhmm: dax %s: bad size '%s'\n", cmd, optarg);
				return CLI_USAGE;
			}
			a->has_size = true;
			break;
		case 'a':
			if (parse_size(optarg, &a->align)) {
				fprintf(stderr, "uhmm: dax %s: bad align '%s'\n", cmd, optarg);
				return CLI_USAGE;
			}
			a->has_align = true;
			break;
		case 'm':
			a->mode = optarg;
			break;
		case 'u':
			break;		/* sizes always accept suffixes */
		case 'h':
			dax_usage(stdout);
			exit(CLI_OK);
		default:
			return CLI_USAGE;
		}
	}
	if (optind < argc)
		a->dev = argv[optind++];
	if (optind < argc)
		return CLI_USAGE;
	return 0;
}

static int open_dev(const char *cmd, struct dax_args *a, struct uhmm_dax_region **r,
		    struct uhmm_dax_dev **d)
{
	int ret = uhmm_dax_region_open(a->regions[0], r);

	if (ret) {
		cli_error(cmd, a->regions[0], ret);
		return CLI_FAIL;
	}
	ret = uhmm_dax_dev_find(*r, a->dev, d);
	if (ret) {
		cli_error(cmd, a->dev, ret);
		uhmm_dax_region_close(*r);
		return CLI_FAIL;
	}
	return 0;
}

static int finish(const char *cmd, const char *obj, struct uhmm_dax_region *r,
		  struct uhmm_dax_dev *d, int ret)
{
	if (ret) {
		cli_error(cmd, obj, ret);
	} else if (d) {
		json_object *o = dev_json(d);

		if (o)
			print_json(o);
	}
	uhmm_dax_region_close(r);
	return ret ? CLI_FAIL : CLI_OK;
}

int cli_cmd_dax(int argc, char **argv)
{
	struct uhmm_dax_region *r;
	struct uhmm_dax_dev *d;
	struct dax_args a;
	const char *cmd;
	int ret;

	if (argc < 2) {
		dax_usage(stderr);
		return CLI_USAGE;
	}
	cmd = argv[1];
	if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
		dax_usage(stdout);
		return CLI_OK;
	}
	if (parse_args(cmd, argc - 1, argv + 1, &a)) {
		dax_usage(stderr);
		return CLI_USAGE;
	}
	if (!a.nr_regions) {
		fprintf(stderr, "uhmm: dax %s: missing -r PATH\n", cmd);
		return CLI_USAGE;
	}
	if (!strcmp(cmd, "create-region")) {
		json_object *o;

		if (!a.has_size || a.dev)
			return CLI_USAGE;
		ret = uhmm_dax_region_create(a.regions[0], a.size,
					     a.has_align ? a.align : UHMM_DAX_ALIGN_2M, &r);
		if (ret) {
			cli_error(cmd, a.regions[0], ret);
			return CLI_FAIL;
		}
		ret = region_json(a.regions[0], r, &o);
		if (!ret)
			print_json(o);
		return finish(cmd, a.regions[0], r, NULL, ret);
	}
	if (!strcmp(cmd, "list")) {
		json_object *arr = json_object_new_array(), *o;

		for (int i = 0; i < a.nr_regions; i++) {
			ret = uhmm_dax_region_open(a.regions[i], &r);
			if (!ret) {
				ret = region_json(a.regions[i], r, &o);
				uhmm_dax_region_close(r);
			}
			if (ret) {
				cli_error(cmd, a.regions[i], ret);
				json_object_put(arr);
				return CLI_FAIL;
			}
			json_object_array_add(arr, o);
		}
		print_json(arr);
		return CLI_OK;
	}
	if (!strcmp(cmd, "create-device")) {
		if (!a.has_size || a.dev)
			return CLI_USAGE;
		ret = uhmm_dax_region_open(a.regions[0], &r);
		if (ret) {
			cli_error(cmd, a.regions[0], ret);
			return CLI_FAIL;
		}
		ret = uhmm_dax_region_seed(r, &d);
		if (!ret && a.has_align)
			ret = uhmm_dax_dev_set_align(d, a.align);
		if (!ret)
			ret = uhmm_dax_dev_resize(d, a.size);
		if (!ret)
			ret = uhmm_dax_dev_enable(d);
		return finish(cmd, a.regions[0], r, d, ret);
	}
	if (!a.dev) {
		fprintf(stderr, "uhmm: dax %s: missing device\n", cmd);
		return CLI_USAGE;
	}
	if (!strcmp(cmd, "destroy-device")) {
		if (open_dev(cmd, &a, &r, &d))
			return CLI_FAIL;
		ret = uhmm_dax_dev_disable(d);
		if (!ret)
			ret = uhmm_dax_dev_destroy(d);
		return finish(cmd, a.dev, r, NULL, ret);
	}
	if (!strcmp(cmd, "resize-device")) {
		if (!a.has_size)
			return CLI_USAGE;
		if (open_dev(cmd, &a, &r, &d))
			return CLI_FAIL;
		return finish(cmd, a.dev, r, d, uhmm_dax_dev_resize(d, a.size));
	}
	if (!strcmp(cmd, "reconfigure-device")) {
		enum uhmm_dax_mode m;

		if (!a.mode)
			return CLI_USAGE;
		if (!strcmp(a.mode, "kmem") || !strcmp(a.mode, "system-ram"))
			m = UHMM_DAX_MODE_KMEM;
		else if (!strcmp(a.mode, "devdax"))
			m = UHMM_DAX_MODE_DEVDAX;
		else {
			fprintf(stderr, "uhmm: dax %s: bad mode '%s'\n", cmd, a.mode);
			return CLI_USAGE;
		}
		if (open_dev(cmd, &a, &r, &d))
			return CLI_FAIL;
		return finish(cmd, a.dev, r, d, uhmm_dax_dev_reconfigure(d, m));
	}
	if (!strcmp(cmd, "enable-device") || !strcmp(cmd, "disable-device")) {
		if (open_dev(cmd, &a, &r, &d))
			return CLI_FAIL;
		ret = cmd[0] == 'e' ? uhmm_dax_dev_enable(d) : uhmm_dax_dev_disable(d);
		return finish(cmd, a.dev, r, d, ret);
	}
	fprintf(stderr, "uhmm: dax: unknown subcommand '%s'\n", cmd);
	dax_usage(stderr);
	return CLI_USAGE;
}
