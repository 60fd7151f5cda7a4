/* front_internal.h - what the front end's stages (lexer, parser, lowering) share. */
#ifndef FLOWC_FRONT_INTERNAL_H
#define FLOWC_FRONT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frontend.h"

/* ---- arena --------------------------------------------------------------
 * The AST and the lowering's temporary values live in an arena: they are made
 * in many small pieces and all die together when a compile ends, so freeing
 * them one by one would only add ways to leak. */

typedef struct fe_arena_chunk fe_arena_chunk;
typedef struct {
  fe_arena_chunk *chunks;
} fe_arena;

void *fe_arena_alloc(fe_arena *a, size_t size); /* zeroed, aligned for any type */
char *fe_arena_strndup(fe_arena *a, const char *s, size_t n);
void fe_arena_free(fe_arena *a);
/* Appends one element to an arena-backed growable array (*items, *n, *cap). */
void *fe_arena_push(fe_arena *a, void *items_ptr, int *n, int *cap, size_t elem_size);

/* ---- tokens -------------------------------------------------------------- */

typedef enum {
  TK_EOF,
  TK_NEWLINE,
  TK_IDENT,
  TK_INT,
  TK_FLOAT,
  TK_STRING,
  TK_LPAREN,
  TK_RPAREN,
  TK_LBRACKET,
  TK_RBRACKET,
  TK_LBRACE,
  TK_RBRACE,
  TK_COMMA,
  TK_ASSIGN,
  TK_COLON,
  TK_DOT,
  TK_PLUS,
  TK_MINUS,
  TK_STAR,
  TK_SLASH,
  TK_SEMICOLON,
} fe_token_kind;

typedef struct {
  fe_token_kind kind;
  fl_loc loc;
  const char *text; /* the token's bytes in the source (not NUL-terminated) */
  size_t len;
  int64_t int_value;  /* TK_INT */
  double float_value; /* TK_INT and TK_FLOAT */
  char *str;          /* TK_STRING: the decoded text (arena); TK_IDENT: the name */
  size_t str_len;
} fe_token;

/* Splits source text into tokens, the last one TK_EOF. Newlines inside ( ) and
 * [ ] are dropped; other newlines and ';' both separate statements. Returns the
 * number of tokens, or -1 after reporting the first lexical error. */
int fe_lex(fe_arena *arena, int file, const char *text, size_t len, fe_token **out);
const char *fe_token_kind_name(fe_token_kind kind);

/* ---- syntax tree ---------------------------------------------------------- */

typedef enum {
  EX_NAME,
  EX_NUMBER,
  EX_STRING,
  EX_LIST,
  EX_CALL,   /* name(args) */
  EX_METHOD, /* receiver.name(args) */
  EX_BINARY, /* lhs op rhs, op one of + - * / */
  EX_NEG,    /* -operand (in lhs) */
} fe_expr_kind;

typedef struct fe_expr fe_expr;

typedef struct {
  const char *name; /* keyword argument name, or NULL when positional */
  fl_loc name_loc;
  fe_expr *value;
} fe_arg;

struct fe_expr {
  fe_expr_kind kind;
  fl_loc loc; /* the name, literal, operator or method name token */
  const char *name; /* EX_NAME, EX_CALL callee, EX_METHOD method */
  double number;    /* EX_NUMBER */
  bool is_integer;  /* EX_NUMBER written without '.' or exponent */
  int64_t int_value;
  const char *str; /* EX_STRING, decoded */
  size_t str_len;
  char op;         /* EX_BINARY */
  fe_expr *lhs, *rhs; /* EX_BINARY operands; EX_NEG operand and EX_METHOD receiver in lhs */
  fe_expr **items;    /* EX_LIST */
  int nitems;
  fe_arg *args; /* EX_CALL, EX_METHOD */
  int nargs;
  fl_loc end_loc; /* EX_CALL, EX_LIST: the closing token */
};

/* One `name = value` of a feed list: `with keep_prob = 0.5`. */
typedef struct {
  const char *name;
  fl_loc loc;
  double value;
} fe_feed_syntax;

typedef enum { TS_SETTING, TS_ACTION } fe_train_stmt_kind;

typedef struct {
  fe_train_stmt_kind kind;
  fl_loc loc; /* the setting name, or the first token of the action */
  /* TS_SETTING */
  const char *name;
  fe_expr *value;
  /* TS_ACTION */
  fl_when when;
  int64_t every;
  fl_action_kind action;
  const char **targets; /* run: names to run */
  fl_loc *target_locs;
  int ntargets;
  fe_token format; /* print: the string token (raw text, for columns inside it) */
  fe_feed_syntax *feeds;
  int nfeeds;
} fe_train_stmt;

typedef enum { ST_DEF, ST_ASSIGN, ST_TRAIN } fe_stmt_kind;

typedef struct {
  fe_stmt_kind kind;
  fl_loc loc; /* the name (def: the function name; train: the keyword) */
  const char *name;
  const char **params; /* ST_DEF */
  fl_loc *param_locs;
  int nparams;
  fe_expr *value; /* ST_DEF body, ST_ASSIGN value */
  fe_train_stmt *train; /* ST_TRAIN */
  int ntrain;
} fe_stmt;

typedef struct {
  fe_stmt *stmts;
  int nstmts;
  int file;
} fe_program;

/* Parses tokens into a program. Returns 0, or -1 after reporting the first
 * syntax error. */
int fe_parse(fe_arena *arena, const fe_token *tokens, int ntokens, fe_program *out);

/* ---- lowering ------------------------------------------------------------- */

/* A name the description gave a tensor, in order of first naming; node_name is
 * the name the node itself carries (differs for `a = b`), so callers can find
 * the node again after passes that renumber the graph. */
typedef struct {
  char *name;
  char *node_name;
  int node;
} fe_binding;

typedef struct {
  fe_binding *items;
  int count;
} fe_bindings;

/* Evaluates a parsed program into a graph. Returns NULL after reporting errors.
 * When names is not NULL it receives the tensor names (free with
 * fe_bindings_free). */
fl_graph *fe_lower(const fe_program *program, const fl_define *defines, int ndefines,
                   fe_bindings *names);
void fe_bindings_free(fe_bindings *names);

/* Like fl_frontend_parse / fl_frontend_load, also returning the tensor names. */
fl_graph *fe_compile_text(const char *path, const char *text, size_t len,
                          const fl_define *defines, int ndefines, fe_bindings *names);
fl_graph *fe_compile_file(const char *path, const fl_define *defines, int ndefines,
                          fe_bindings *names);

/* Edit distance (insertions, deletions, substitutions, adjacent swaps), for
 * "did you mean" suggestions. */
int fe_edit_distance(const char *a, const char *b);

#endif
