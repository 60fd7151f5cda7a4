/* commands.h - the flowc subcommands and the option parsing they share. */
#ifndef FLOWC_COMMANDS_H
#define FLOWC_COMMANDS_H

#include <stdio.h>

#include "frontend.h"

enum { FLOWC_MAX_DEFINES = 64, FLOWC_MAX_EXTRA = 64 };

/* Exit statuses: 0 done, 1 the input is wrong (the error is printed), 2 the
 * command line is wrong (usage printed). */
enum { FLOWC_OK = 0, FLOWC_USER_ERROR = 1, FLOWC_USAGE_ERROR = 2 };

/* What every command understands: one input file, -o FILE, -D NAME=VALUE. */
struct flowc_args {
  const char *command;
  const char *input;
  const char *output; /* NULL: standard output */
  fl_define defines[FLOWC_MAX_DEFINES];
  int ndefines;
  /* Options the common parser does not know, in order, for the command to
   * read: an option named in value_options is followed by its value. */
  const char *extra[FLOWC_MAX_EXTRA];
  int nextra;
};

/* Parses argv[1..argc) (argv[0] is the command name). value_options lists the
 * command's own options that take a value ("--target"), NULL-terminated, or is
 * NULL. Returns FLOWC_OK, or FLOWC_USAGE_ERROR after printing why. Options
 * not in value_options and not common are left in extra; a command that takes
 * none calls flowc_no_extra_options. A -D argument is cut at its '=' in place
 * (defines[i].name points into argv), so parse one argv once. */
int flowc_parse_args(int argc, char **argv, struct flowc_args *args,
                     const char *const *value_options);
int flowc_no_extra_options(const struct flowc_args *args);

/* Prints "flowc: MESSAGE" and the usage line to stderr; returns FLOWC_USAGE_ERROR. */
int flowc_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Loads args->input with the defines and runs every check (fl_finish).
 * Returns NULL after the errors were printed. */
fl_graph *flowc_load(const struct flowc_args *args);

/* Opens args->output (or returns stdout); NULL after printing why. Close it
 * with flowc_close_output, which reports write errors (returns nonzero). */
FILE *flowc_open_output(const struct flowc_args *args);
int flowc_close_output(const struct flowc_args *args, FILE *out);

/* The commands. argv[0] is the command's name; the rest are its arguments. */
int cmd_check(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_graph(int argc, char **argv);
int cmd_build(int argc, char **argv); /* build.c */
int cmd_emit(int argc, char **argv);  /* build.c */

#endif
