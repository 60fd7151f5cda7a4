/* parser.c - recursive-descent parser from tokens to the syntax tree of a .flow program. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "front_internal.h"

/* Deeper nesting than this is reported instead of risking the C stack. */
enum { MAX_NESTING = 200 };

typedef struct {
  fe_arena *arena;
  const fe_token *toks;
  int ntoks;
  int pos;
  int depth;
  jmp_buf fail; /* the first syntax error ends the parse; the arena owns everything */
} parser;

static const fe_token *peek(const parser *p) { return &p->toks[p->pos]; }
static const fe_token *peek2(const parser *p) {
  return &p->toks[p->pos + 1 < p->ntoks ? p->pos + 1 : p->ntoks - 1];
}
static const fe_token *next(parser *p) {
  const fe_token *t = &p->toks[p->pos];
  if (t->kind != TK_EOF) p->pos++;
  return t;
}
static bool at(const parser *p, fe_token_kind kind) { return peek(p)->kind == kind; }
static bool at_word(const parser *p, const char *word) {
  return peek(p)->kind == TK_IDENT && strcmp(peek(p)->str, word) == 0;
}

static _Noreturn void fail_at(parser *p, fl_loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static _Noreturn void fail_at(parser *p, fl_loc loc, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fl_error(loc, "%s", msg);
  longjmp(p->fail, 1);
}

/* "name 'foo'", "number 3.5", "')'" - what a message says it found. */
static const char *describe(const fe_token *t, char *buf, size_t cap) {
  int shown = t->len > 30 ? 30 : (int)t->len;
  switch (t->kind) {
  case TK_IDENT: snprintf(buf, cap, "name '%.*s'", shown, t->text); break;
  case TK_INT: case TK_FLOAT: snprintf(buf, cap, "number %.*s", shown, t->text); break;
  case TK_STRING: snprintf(buf, cap, "string %.*s%s", shown, t->text, t->len > 30 ? "...\"" : ""); break;
  default: snprintf(buf, cap, "%s", fe_token_kind_name(t->kind)); break;
  }
  return buf;
}

static _Noreturn void fail_expected(parser *p, const char *what) {
  char found[64];
  fail_at(p, peek(p)->loc, "expected %s, found %s", what, describe(peek(p), found, sizeof found));
}

static const fe_token *expect(parser *p, fe_token_kind kind, const char *what) {
  if (!at(p, kind)) fail_expected(p, what);
  return next(p);
}

static void enter(parser *p) {
  if (++p->depth > MAX_NESTING)
    fail_at(p, peek(p)->loc, "expression nested too deeply (more than %d levels)", MAX_NESTING);
}
static void leave(parser *p) { p->depth--; }

static fe_expr *new_expr(parser *p, fe_expr_kind kind, fl_loc loc) {
  fe_expr *e = fe_arena_alloc(p->arena, sizeof *e);
  e->kind = kind;
  e->loc = loc;
  return e;
}

static fe_expr *parse_expr(parser *p);

/* args := [arg {',' arg} [',']] ')'; arg := [NAME '='] expr. The '(' is eaten. */
static void parse_args(parser *p, fe_expr *call, fl_loc open) {
  int cap = 0;
  bool seen_keyword = false;
  while (!at(p, TK_RPAREN)) {
    fe_arg arg = {0};
    if (at(p, TK_IDENT) && peek2(p)->kind == TK_ASSIGN) {
      const fe_token *name = next(p);
      next(p);
      arg.name = name->str;
      arg.name_loc = name->loc;
      for (int i = 0; i < call->nargs; i++)
        if (call->args[i].name && strcmp(call->args[i].name, arg.name) == 0)
          fail_at(p, name->loc, "argument '%s' is given twice", arg.name);
      seen_keyword = true;
    } else if (seen_keyword) {
      fail_at(p, peek(p)->loc, "positional argument after keyword argument");
    }
    arg.value = parse_expr(p);
    if (!arg.name) arg.name_loc = arg.value->loc;
    *(fe_arg *)fe_arena_push(p->arena, &call->args, &call->nargs, &cap, sizeof arg) = arg;
    if (at(p, TK_COMMA)) {
      next(p);
      continue;
    }
    if (!at(p, TK_RPAREN)) {
      char what[96];
      snprintf(what, sizeof what, "',' or ')' to close the '(' at %d:%d", open.line, open.col);
      fail_expected(p, what);
    }
  }
  call->end_loc = next(p)->loc;
}

static fe_expr *parse_primary(parser *p) {
  const fe_token *t = peek(p);
  switch (t->kind) {
  case TK_IDENT: {
    next(p);
    if (strcmp(t->str, "def") == 0 || (strcmp(t->str, "train") == 0 && at(p, TK_LBRACE)))
      fail_at(p, t->loc, "'%s' cannot be used inside an expression", t->str);
    if (at(p, TK_LPAREN)) {
      fl_loc open = next(p)->loc;
      fe_expr *call = new_expr(p, EX_CALL, t->loc);
      call->name = t->str;
      parse_args(p, call, open);
      return call;
    }
    fe_expr *e = new_expr(p, EX_NAME, t->loc);
    e->name = t->str;
    return e;
  }
  case TK_INT: case TK_FLOAT: {
    next(p);
    fe_expr *e = new_expr(p, EX_NUMBER, t->loc);
    e->number = t->float_value;
    e->is_integer = t->kind == TK_INT;
    e->int_value = t->int_value;
    return e;
  }
  case TK_STRING: {
    next(p);
    fe_expr *e = new_expr(p, EX_STRING, t->loc);
    e->str = t->str;
    e->str_len = t->str_len;
    return e;
  }
  case TK_LBRACKET: {
    next(p);
    fe_expr *list = new_expr(p, EX_LIST, t->loc);
    int cap = 0;
    while (!at(p, TK_RBRACKET)) {
      fe_expr *item = parse_expr(p);
      *(fe_expr **)fe_arena_push(p->arena, &list->items, &list->nitems, &cap, sizeof item) = item;
      if (at(p, TK_COMMA)) {
        next(p);
        continue;
      }
      if (!at(p, TK_RBRACKET)) {
        char what[96];
        snprintf(what, sizeof what, "',' or ']' to close the '[' at %d:%d", t->loc.line,
                 t->loc.col);
        fail_expected(p, what);
      }
    }
    list->end_loc = next(p)->loc;
    return list;
  }
  case TK_LPAREN: {
    next(p);
    fe_expr *inner = parse_expr(p);
    if (!at(p, TK_RPAREN)) {
      char what[96];
      snprintf(what, sizeof what, "')' to close the '(' at %d:%d", t->loc.line, t->loc.col);
      fail_expected(p, what);
    }
    next(p);
    return inner;
  }
  default:
    fail_expected(p, "an expression");
  }
}

static fe_expr *parse_postfix(parser *p) {
  fe_expr *e = parse_primary(p);
  while (at(p, TK_DOT)) {
    next(p);
    const fe_token *name = expect(p, TK_IDENT, "a method name after '.'");
    if (!at(p, TK_LPAREN)) fail_expected(p, "'(' after the method name");
    fl_loc open = next(p)->loc;
    fe_expr *call = new_expr(p, EX_METHOD, name->loc);
    call->name = name->str;
    call->lhs = e;
    parse_args(p, call, open);
    e = call;
  }
  return e;
}

/* Unary minus binds tighter than * and /, as in Python. */
static fe_expr *parse_unary(parser *p) {
  if (at(p, TK_MINUS)) {
    const fe_token *minus = next(p);
    enter(p);
    fe_expr *e = new_expr(p, EX_NEG, minus->loc);
    e->lhs = parse_unary(p);
    leave(p);
    return e;
  }
  return parse_postfix(p);
}

static fe_expr *parse_term(parser *p) {
  fe_expr *lhs = parse_unary(p);
  while (at(p, TK_STAR) || at(p, TK_SLASH)) {
    const fe_token *op = next(p);
    fe_expr *e = new_expr(p, EX_BINARY, op->loc);
    e->op = op->kind == TK_STAR ? '*' : '/';
    e->lhs = lhs;
    e->rhs = parse_unary(p);
    lhs = e;
  }
  return lhs;
}

static fe_expr *parse_expr(parser *p) {
  enter(p);
  fe_expr *lhs = parse_term(p);
  while (at(p, TK_PLUS) || at(p, TK_MINUS)) {
    const fe_token *op = next(p);
    fe_expr *e = new_expr(p, EX_BINARY, op->loc);
    e->op = op->kind == TK_PLUS ? '+' : '-';
    e->lhs = lhs;
    e->rhs = parse_term(p);
    lhs = e;
  }
  leave(p);
  return lhs;
}

static bool at_statement_end(const parser *p) {
  return at(p, TK_NEWLINE) || at(p, TK_SEMICOLON) || at(p, TK_EOF);
}

static void skip_separators(parser *p) {
  while (at(p, TK_NEWLINE) || at(p, TK_SEMICOLON)) next(p);
}

/* feeds := NAME '=' ['-'] NUMBER {',' NAME '=' ['-'] NUMBER} */
static void parse_feeds(parser *p, fe_train_stmt *s) {
  int cap = 0;
  do {
    const fe_token *name = expect(p, TK_IDENT, "the name of a tensor to feed after 'with'");
    expect(p, TK_ASSIGN, "'=' after the name of a fed tensor");
    double sign = 1;
    if (at(p, TK_MINUS) || at(p, TK_PLUS)) sign = next(p)->kind == TK_MINUS ? -1 : 1;
    if (!at(p, TK_INT) && !at(p, TK_FLOAT)) {
      char what[96];
      snprintf(what, sizeof what, "a number to feed to '%s'", name->str);
      fail_expected(p, what);
    }
    fe_feed_syntax feed = {.name = name->str, .loc = name->loc,
                           .value = sign * next(p)->float_value};
    for (int i = 0; i < s->nfeeds; i++)
      if (strcmp(s->feeds[i].name, feed.name) == 0)
        fail_at(p, name->loc, "'%s' is fed twice in this action", feed.name);
    *(fe_feed_syntax *)fe_arena_push(p->arena, &s->feeds, &s->nfeeds, &cap, sizeof feed) = feed;
  } while (at(p, TK_COMMA) && next(p));
}

static void parse_action(parser *p, fe_train_stmt *s) {
  s->kind = TS_ACTION;
  if (at_word(p, "run")) {
    next(p);
    s->action = FL_ACT_RUN;
    int cap = 0, loc_cap = 0, nlocs = 0;
    do {
      const fe_token *name = expect(p, TK_IDENT, "the name of a tensor or train op to run");
      *(const char **)fe_arena_push(p->arena, &s->targets, &s->ntargets, &cap,
                                    sizeof(const char *)) = name->str;
      *(fl_loc *)fe_arena_push(p->arena, &s->target_locs, &nlocs, &loc_cap, sizeof(fl_loc)) =
          name->loc;
    } while (at(p, TK_COMMA) && next(p));
  } else if (at_word(p, "print")) {
    next(p);
    s->action = FL_ACT_PRINT;
    s->format = *expect(p, TK_STRING, "a format string after 'print', like \"loss {loss}\"");
  } else {
    fail_expected(p, "an action: 'run' or 'print'");
  }
  if (at_word(p, "with")) {
    next(p);
    parse_feeds(p, s);
  }
}

static void parse_train_stmt(parser *p, fe_train_stmt *s) {
  const fe_token *first = peek(p);
  s->loc = first->loc;
  s->when = FL_WHEN_STEP;
  if (first->kind == TK_IDENT && peek2(p)->kind == TK_ASSIGN) {
    next(p);
    next(p);
    s->kind = TS_SETTING;
    s->name = first->str;
    s->value = parse_expr(p);
    return;
  }
  if (first->kind != TK_IDENT)
    fail_expected(p, "a setting (name = value) or an action (run, print) in the train block");
  static const struct {
    const char *word;
    fl_when when;
  } whens[] = {{"start", FL_WHEN_START}, {"end", FL_WHEN_END}, {"test", FL_WHEN_TEST}};
  for (size_t i = 0; i < sizeof whens / sizeof whens[0]; i++)
    if (strcmp(first->str, whens[i].word) == 0 && peek2(p)->kind == TK_COLON) {
      next(p);
      next(p);
      s->when = whens[i].when;
      parse_action(p, s);
      return;
    }
  if (strcmp(first->str, "every") == 0) {
    next(p);
    const fe_token *n = expect(p, TK_INT, "a number of steps after 'every'");
    if (n->int_value < 1) fail_at(p, n->loc, "every: the interval must be at least 1 step");
    expect(p, TK_COLON, "':' after 'every N'");
    s->when = FL_WHEN_EVERY;
    s->every = n->int_value;
    parse_action(p, s);
    return;
  }
  if (strcmp(first->str, "run") != 0 && strcmp(first->str, "print") != 0) {
    char found[64];
    fail_at(p, first->loc,
            "expected a setting (name = value) or an action ('run', 'print', optionally after "
            "'start:', 'end:', 'test:' or 'every N:'), found %s",
            describe(first, found, sizeof found));
  }
  parse_action(p, s);
}

static void parse_train(parser *p, fe_stmt *st) {
  const fe_token *open = expect(p, TK_LBRACE, "'{'");
  int cap = 0;
  for (;;) {
    skip_separators(p);
    if (at(p, TK_RBRACE)) break;
    if (at(p, TK_EOF))
      fail_at(p, open->loc, "the train block's '{' is never closed with '}'");
    fe_train_stmt *s = fe_arena_push(p->arena, &st->train, &st->ntrain, &cap, sizeof *s);
    parse_train_stmt(p, s);
    if (!at(p, TK_NEWLINE) && !at(p, TK_SEMICOLON) && !at(p, TK_RBRACE))
      fail_expected(p, "the end of the line after a train-block statement");
  }
  next(p);
}

static void parse_def(parser *p, fe_stmt *st) {
  next(p); /* def */
  const fe_token *name = expect(p, TK_IDENT, "a function name after 'def'");
  st->kind = ST_DEF;
  st->name = name->str;
  st->loc = name->loc;
  const fe_token *open = expect(p, TK_LPAREN, "'(' after the function name");
  int cap = 0, loc_cap = 0, nlocs = 0;
  while (!at(p, TK_RPAREN)) {
    const fe_token *param = expect(p, TK_IDENT, "a parameter name");
    for (int i = 0; i < st->nparams; i++)
      if (strcmp(st->params[i], param->str) == 0)
        fail_at(p, param->loc, "parameter '%s' is listed twice", param->str);
    *(const char **)fe_arena_push(p->arena, &st->params, &st->nparams, &cap,
                                  sizeof(const char *)) = param->str;
    *(fl_loc *)fe_arena_push(p->arena, &st->param_locs, &nlocs, &loc_cap, sizeof(fl_loc)) =
        param->loc;
    if (at(p, TK_COMMA)) {
      next(p);
      continue;
    }
    if (!at(p, TK_RPAREN)) {
      char what[96];
      snprintf(what, sizeof what, "',' or ')' to close the '(' at %d:%d", open->loc.line,
               open->loc.col);
      fail_expected(p, what);
    }
  }
  next(p);
  expect(p, TK_ASSIGN, "'=' and the function's body after its parameters");
  st->value = parse_expr(p);
}

static void parse_statement(parser *p, fe_stmt *st) {
  const fe_token *t = peek(p);
  if (t->kind == TK_IDENT && strcmp(t->str, "def") == 0) {
    parse_def(p, st);
    return;
  }
  if (t->kind == TK_IDENT && strcmp(t->str, "train") == 0 && peek2(p)->kind == TK_LBRACE) {
    next(p);
    st->kind = ST_TRAIN;
    st->loc = t->loc;
    parse_train(p, st);
    return;
  }
  if (t->kind == TK_IDENT) {
    next(p);
    if (!at(p, TK_ASSIGN)) {
      char found[64];
      fail_at(p, peek(p)->loc, "expected '=' after '%s' (a statement is name = value), found %s",
              t->str, describe(peek(p), found, sizeof found));
    }
    next(p);
    st->kind = ST_ASSIGN;
    st->name = t->str;
    st->loc = t->loc;
    st->value = parse_expr(p);
    return;
  }
  fail_expected(p, "a statement (name = value, def or train)");
}

static void parse_program(parser *p, fe_program *out) {
  int cap = 0;
  for (;;) {
    skip_separators(p);
    if (at(p, TK_EOF)) break;
    fe_stmt *st = fe_arena_push(p->arena, &out->stmts, &out->nstmts, &cap, sizeof *st);
    parse_statement(p, st);
    if (!at_statement_end(p)) fail_expected(p, "the end of the line after the statement");
  }
}

int fe_parse(fe_arena *arena, const fe_token *tokens, int ntokens, fe_program *out) {
  parser p = {.arena = arena, .toks = tokens, .ntoks = ntokens};
  memset(out, 0, sizeof *out);
  out->file = ntokens > 0 ? tokens[0].loc.file : 0;
  if (setjmp(p.fail)) return -1;
  parse_program(&p, out);
  return 0;
}
