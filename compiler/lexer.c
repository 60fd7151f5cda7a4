/* lexer.c - splits .flow source text into tokens that carry their source locations. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "front_internal.h"

typedef struct {
  fe_arena *arena;
  int file;
  const char *text;
  size_t len, pos;
  int line, col;
  int bracket_depth; /* open ( and [: newlines inside them do not end a statement */
  fe_token *tokens;
  int ntokens, cap;
} lexer;

const char *fe_token_kind_name(fe_token_kind kind) {
  switch (kind) {
  case TK_EOF: return "end of file";
  case TK_NEWLINE: return "end of line";
  case TK_IDENT: return "name";
  case TK_INT: return "integer";
  case TK_FLOAT: return "number";
  case TK_STRING: return "string";
  case TK_LPAREN: return "'('";
  case TK_RPAREN: return "')'";
  case TK_LBRACKET: return "'['";
  case TK_RBRACKET: return "']'";
  case TK_LBRACE: return "'{'";
  case TK_RBRACE: return "'}'";
  case TK_COMMA: return "','";
  case TK_ASSIGN: return "'='";
  case TK_COLON: return "':'";
  case TK_DOT: return "'.'";
  case TK_PLUS: return "'+'";
  case TK_MINUS: return "'-'";
  case TK_STAR: return "'*'";
  case TK_SLASH: return "'/'";
  case TK_SEMICOLON: return "';'";
  }
  return "token";
}

static bool is_ident_start(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_digit(int c) { return c >= '0' && c <= '9'; }
static bool is_ident_char(int c) { return is_ident_start(c) || is_digit(c); }

static int peek_at(const lexer *lx, size_t offset) {
  return lx->pos + offset < lx->len ? (unsigned char)lx->text[lx->pos + offset] : -1;
}

static fl_loc loc_here(const lexer *lx, int len) {
  return (fl_loc){.file = lx->file, .line = lx->line, .col = lx->col, .len = len < 1 ? 1 : len};
}

/* Moves over n bytes of one line (never a newline). */
static void advance(lexer *lx, size_t n) {
  lx->pos += n;
  lx->col += (int)n;
}

/* Writes a byte as it should appear inside quotes in a message. */
static void describe_byte(unsigned char c, char *buf, size_t cap) {
  if (c >= 32 && c < 127)
    snprintf(buf, cap, "%c", c);
  else
    snprintf(buf, cap, "\\x%02x", c);
}

static void bad_character(lexer *lx, unsigned char c) {
  char shown[8];
  describe_byte(c, shown, sizeof shown);
  if (c == '\'')
    fl_error(loc_here(lx, 1), "unexpected character '''; strings are written in double quotes");
  else
    fl_error(loc_here(lx, 1), "unexpected character '%s'", shown);
}

static fe_token *add_token(lexer *lx, fe_token_kind kind, size_t start, int line, int col) {
  fe_token *t = fe_arena_push(lx->arena, &lx->tokens, &lx->ntokens, &lx->cap, sizeof *t);
  t->kind = kind;
  t->text = lx->text + start;
  t->len = lx->pos - start;
  t->loc = (fl_loc){.file = lx->file, .line = line, .col = col,
                    .len = t->len < 1 ? 1 : (t->len > 1000 ? 1000 : (int)t->len)};
  return t;
}

/* Numbers: 12, 3.5, 3., .5, 1e-4, 2.5E+3. A literal written with neither '.'
 * nor an exponent is an integer. */
static int lex_number(lexer *lx) {
  size_t start = lx->pos;
  int line = lx->line, col = lx->col;
  bool is_float = false;
  while (is_digit(peek_at(lx, 0))) advance(lx, 1);
  if (peek_at(lx, 0) == '.') {
    /* "3.e5" is a number, "x.minimize" a method call; a digit never starts a name. */
    int next = peek_at(lx, 1);
    bool exponent_next = (next == 'e' || next == 'E') &&
                         (is_digit(peek_at(lx, 2)) ||
                          ((peek_at(lx, 2) == '+' || peek_at(lx, 2) == '-') && is_digit(peek_at(lx, 3))));
    if (!is_ident_start(next) || exponent_next) {
      is_float = true;
      advance(lx, 1);
      while (is_digit(peek_at(lx, 0))) advance(lx, 1);
    }
  }
  if (peek_at(lx, 0) == 'e' || peek_at(lx, 0) == 'E') {
    size_t digits_at = 1;
    if (peek_at(lx, 1) == '+' || peek_at(lx, 1) == '-') digits_at = 2;
    if (is_digit(peek_at(lx, digits_at))) {
      is_float = true;
      advance(lx, digits_at);
      while (is_digit(peek_at(lx, 0))) advance(lx, 1);
    }
  }
  if (is_ident_char(peek_at(lx, 0))) {
    while (is_ident_char(peek_at(lx, 0))) advance(lx, 1);
    int len = (int)(lx->pos - start);
    fl_error((fl_loc){lx->file, line, col, len}, "invalid number '%.*s'", len > 40 ? 40 : len,
             lx->text + start);
    return -1;
  }
  fe_token *t = add_token(lx, is_float ? TK_FLOAT : TK_INT, start, line, col);
  if (!is_float) {
    int64_t v = 0;
    for (size_t i = 0; i < t->len; i++) {
      int digit = t->text[i] - '0';
      if (v > (INT64_MAX - digit) / 10) {
        fl_error(t->loc, "number too large: '%.*s' does not fit in 64 bits",
                 t->loc.len > 40 ? 40 : t->loc.len, t->text);
        return -1;
      }
      v = v * 10 + digit;
    }
    t->int_value = v;
    t->float_value = (double)v;
    return 0;
  }
  /* strtod needs a terminated string, and the source buffer may not be one. */
  char *copy = fe_arena_strndup(lx->arena, t->text, t->len);
  errno = 0;
  double v = strtod(copy, NULL);
  if (isinf(v)) {
    fl_error(t->loc, "number too large: '%.*s' is beyond the range of a double",
             t->loc.len > 40 ? 40 : t->loc.len, t->text);
    return -1;
  }
  t->float_value = v;
  return 0;
}

/* Strings: double quotes, escapes \" \\ \n \t; braces are kept as written
 * (print formats read them later). A string ends on its line. */
static int lex_string(lexer *lx) {
  size_t start = lx->pos;
  int line = lx->line, col = lx->col;
  fl_loc open = loc_here(lx, 1);
  advance(lx, 1);
  char *decoded = fe_arena_alloc(lx->arena, lx->len - lx->pos + 1);
  size_t n = 0;
  for (;;) {
    int c = peek_at(lx, 0);
    if (c < 0 || c == '\n') {
      fl_error(open, "unterminated string: the closing '\"' is missing on this line");
      return -1;
    }
    if (c == '"') {
      advance(lx, 1);
      break;
    }
    if (c == '\\') {
      int e = peek_at(lx, 1);
      char out;
      switch (e) {
      case '"': out = '"'; break;
      case '\\': out = '\\'; break;
      case 'n': out = '\n'; break;
      case 't': out = '\t'; break;
      default: {
        if (e < 0 || e == '\n') {
          fl_error(open, "unterminated string: the closing '\"' is missing on this line");
          return -1;
        }
        char shown[8];
        describe_byte((unsigned char)e, shown, sizeof shown);
        fl_error(loc_here(lx, 2), "unknown escape '\\%s' in string (known: \\\" \\\\ \\n \\t)",
                 shown);
        return -1;
      }
      }
      decoded[n++] = out;
      advance(lx, 2);
      continue;
    }
    if (c < 32 && c != '\t') {
      bad_character(lx, (unsigned char)c);
      return -1;
    }
    decoded[n++] = (char)c;
    advance(lx, 1);
  }
  decoded[n] = '\0';
  fe_token *t = add_token(lx, TK_STRING, start, line, col);
  t->str = decoded;
  t->str_len = n;
  return 0;
}

static fe_token_kind punctuation(int c) {
  switch (c) {
  case '(': return TK_LPAREN;
  case ')': return TK_RPAREN;
  case '[': return TK_LBRACKET;
  case ']': return TK_RBRACKET;
  case '{': return TK_LBRACE;
  case '}': return TK_RBRACE;
  case ',': return TK_COMMA;
  case '=': return TK_ASSIGN;
  case ':': return TK_COLON;
  case '.': return TK_DOT;
  case '+': return TK_PLUS;
  case '-': return TK_MINUS;
  case '*': return TK_STAR;
  case '/': return TK_SLASH;
  case ';': return TK_SEMICOLON;
  default: return TK_EOF;
  }
}

int fe_lex(fe_arena *arena, int file, const char *text, size_t len, fe_token **out) {
  lexer lx = {.arena = arena, .file = file, .text = text, .len = len, .line = 1, .col = 1};
  for (;;) {
    int c = peek_at(&lx, 0);
    if (c < 0) break;
    if (c == ' ' || c == '\t' || c == '\r') {
      advance(&lx, 1);
      continue;
    }
    if (c == '#') {
      while (peek_at(&lx, 0) >= 0 && peek_at(&lx, 0) != '\n') advance(&lx, 1);
      continue;
    }
    if (c == '\n') {
      /* One NEWLINE per run of line ends, none at the start or inside brackets. */
      bool wanted = lx.bracket_depth == 0 && lx.ntokens > 0 &&
                    lx.tokens[lx.ntokens - 1].kind != TK_NEWLINE;
      if (wanted) {
        size_t start = lx.pos;
        lx.pos++;
        add_token(&lx, TK_NEWLINE, start, lx.line, lx.col);
      } else {
        lx.pos++;
      }
      lx.line++;
      lx.col = 1;
      continue;
    }
    if (is_digit(c) || (c == '.' && is_digit(peek_at(&lx, 1)))) {
      if (lex_number(&lx)) return -1;
      continue;
    }
    if (is_ident_start(c)) {
      size_t start = lx.pos;
      int col = lx.col;
      while (is_ident_char(peek_at(&lx, 0))) advance(&lx, 1);
      fe_token *t = add_token(&lx, TK_IDENT, start, lx.line, col);
      t->str = fe_arena_strndup(arena, t->text, t->len);
      t->str_len = t->len;
      continue;
    }
    if (c == '"') {
      if (lex_string(&lx)) return -1;
      continue;
    }
    fe_token_kind kind = punctuation(c);
    if (kind == TK_EOF) {
      bad_character(&lx, (unsigned char)c);
      return -1;
    }
    if (kind == TK_LPAREN || kind == TK_LBRACKET) lx.bracket_depth++;
    if ((kind == TK_RPAREN || kind == TK_RBRACKET) && lx.bracket_depth > 0) lx.bracket_depth--;
    size_t start = lx.pos;
    int col = lx.col;
    advance(&lx, 1);
    add_token(&lx, kind, start, lx.line, col);
  }
  /* The end of file ends the last statement too; its location is just past the text. */
  size_t end = lx.pos;
  if (lx.ntokens > 0 && lx.tokens[lx.ntokens - 1].kind != TK_NEWLINE)
    add_token(&lx, TK_NEWLINE, end, lx.line, lx.col);
  add_token(&lx, TK_EOF, end, lx.line, lx.col);
  *out = lx.tokens;
  return lx.ntokens;
}
