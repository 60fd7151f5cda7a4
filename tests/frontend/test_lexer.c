/* test_lexer.c - tokens, their locations, numbers, strings and bad bytes. */
#include <criterion/criterion.h>

#include "test_util.h"

static diag_capture diag;
static fe_arena arena;

static void setup(void) {
  capture_begin(&diag);
  memset(&arena, 0, sizeof arena);
}
static void teardown(void) {
  fe_arena_free(&arena);
  capture_end(&diag);
}

TestSuite(lexer, .init = setup, .fini = teardown);

/* Lexes a copy of text in a buffer of exactly its length (no terminating NUL),
 * so that AddressSanitizer catches any read past the end. */
static int lex(const char *text, fe_token **toks) {
  size_t len = strlen(text);
  char *exact = malloc(len ? len : 1);
  memcpy(exact, text, len);
  int file = fl_source_add("t.flow", exact, len);
  int n = fe_lex(&arena, file, exact, len, toks);
  free(exact); /* tokens point into it; tests below only read kinds and values */
  return n;
}

static int lex_kinds(const char *text, fe_token_kind *kinds, int cap) {
  fe_token *toks;
  int n = lex(text, &toks);
  for (int i = 0; i < n && i < cap; i++) kinds[i] = toks[i].kind;
  return n;
}

Test(lexer, every_punctuation_kind) {
  fe_token_kind k[32];
  int n = lex_kinds("( ) [ ] { } , = : . + - * / ;", k, 32);
  fe_token_kind want[] = {TK_LPAREN, TK_RPAREN, TK_LBRACKET, TK_RBRACKET, TK_LBRACE, TK_RBRACE,
                          TK_COMMA, TK_ASSIGN, TK_COLON, TK_DOT, TK_PLUS, TK_MINUS, TK_STAR,
                          TK_SLASH, TK_SEMICOLON, TK_NEWLINE, TK_EOF};
  cr_assert_eq(n, (int)(sizeof want / sizeof want[0]));
  for (int i = 0; i < n; i++) cr_expect_eq(k[i], want[i], "token %d", i);
}

Test(lexer, identifiers_numbers_strings) {
  fe_token *t;
  int n = lex("W_conv1 42 0.5 \"hi\"", &t);
  cr_assert_eq(n, 6);
  cr_expect_eq(t[0].kind, TK_IDENT);
  cr_expect_str_eq(t[0].str, "W_conv1");
  cr_expect_eq(t[1].kind, TK_INT);
  cr_expect_eq(t[1].int_value, 42);
  cr_expect_eq(t[2].kind, TK_FLOAT);
  cr_expect_float_eq(t[2].float_value, 0.5, 1e-12);
  cr_expect_eq(t[3].kind, TK_STRING);
  cr_expect_str_eq(t[3].str, "hi");
}

Test(lexer, number_forms) {
  fe_token *t;
  int n = lex("1e-4 .5 3. 2.5E+3 7 3.e2", &t);
  cr_assert_eq(n, 8);
  double want[] = {1e-4, 0.5, 3.0, 2500.0, 7.0, 300.0};
  fe_token_kind kinds[] = {TK_FLOAT, TK_FLOAT, TK_FLOAT, TK_FLOAT, TK_INT, TK_FLOAT};
  for (int i = 0; i < 6; i++) {
    cr_expect_eq(t[i].kind, kinds[i], "token %d", i);
    cr_expect_float_eq(t[i].float_value, want[i], 1e-12, "token %d", i);
  }
}

Test(lexer, number_then_method_is_not_a_float) {
  fe_token_kind k[8];
  int n = lex_kinds("x.minimize", k, 8);
  cr_assert_eq(n, 5);
  cr_expect_eq(k[0], TK_IDENT);
  cr_expect_eq(k[1], TK_DOT);
  cr_expect_eq(k[2], TK_IDENT);
}

Test(lexer, largest_integer_fits) {
  fe_token *t;
  cr_assert_eq(lex("9223372036854775807", &t), 3);
  cr_expect_eq(t[0].int_value, INT64_MAX);
}

Test(lexer, integer_overflow_is_an_error) {
  fe_token *t;
  cr_expect_eq(lex("x = 9223372036854775808", &t), -1);
  cr_expect(strstr(capture_text(&diag), "t.flow:1:5: error: number too large"), "%s", capture_text(&diag));
}

Test(lexer, float_overflow_is_an_error) {
  fe_token *t;
  cr_expect_eq(lex("1e400", &t), -1);
  cr_expect(strstr(capture_text(&diag), "number too large"));
}

Test(lexer, tiny_float_underflows_to_zero) {
  fe_token *t;
  cr_assert_eq(lex("1e-400", &t), 3);
  cr_expect_eq(t[0].kind, TK_FLOAT);
}

Test(lexer, number_glued_to_a_name) {
  fe_token *t;
  cr_expect_eq(lex("3abc", &t), -1);
  cr_expect(strstr(capture_text(&diag), "1:1: error: invalid number '3abc'"));
}

Test(lexer, string_escapes_and_braces) {
  fe_token *t;
  cr_assert_eq(lex("\"a\\\"b\\\\c\\nd\\te {x} {{\"", &t), 3);
  cr_expect_str_eq(t[0].str, "a\"b\\c\nd\te {x} {{");
  cr_expect_eq(t[0].loc.len, 22);
}

Test(lexer, unterminated_string) {
  fe_token *t;
  cr_expect_eq(lex("x = \"abc\ny = 1", &t), -1);
  cr_expect(strstr(capture_text(&diag), "1:5: error: unterminated string"));
  cr_expect_eq(lex("\"abc", &t), -1);
}

Test(lexer, unknown_escape) {
  fe_token *t;
  cr_expect_eq(lex("\"a\\q\"", &t), -1);
  cr_expect(strstr(capture_text(&diag), "1:3: error: unknown escape '\\q'"));
}

Test(lexer, locations) {
  fe_token *t;
  int n = lex("x = 1\n  yy = relu(x)\n", &t);
  cr_assert_eq(n, 12);
  cr_expect_eq(t[0].loc.line, 1);
  cr_expect_eq(t[0].loc.col, 1);
  cr_expect_eq(t[2].loc.col, 5);
  cr_expect_eq(t[3].kind, TK_NEWLINE);
  cr_expect_eq(t[4].loc.line, 2);
  cr_expect_eq(t[4].loc.col, 3);
  cr_expect_eq(t[4].loc.len, 2);
  cr_expect_eq(t[6].loc.col, 8); /* relu */
  cr_expect_eq(t[6].loc.len, 4);
}

Test(lexer, newlines_inside_brackets_are_dropped) {
  fe_token_kind k[32];
  int n = lex_kinds("x = f(a,\n b)\ny = [1,\n 2]\n", k, 32);
  int newlines = 0;
  for (int i = 0; i < n; i++) newlines += k[i] == TK_NEWLINE;
  cr_expect_eq(newlines, 2);
}

Test(lexer, newlines_inside_braces_are_kept) {
  fe_token_kind k[32];
  int n = lex_kinds("train {\n steps = 1\n}", k, 32);
  int newlines = 0;
  for (int i = 0; i < n; i++) newlines += k[i] == TK_NEWLINE;
  cr_expect_eq(newlines, 3);
}

Test(lexer, blank_lines_and_comments_collapse) {
  fe_token_kind k[32];
  int n = lex_kinds("\n\n# comment\nx = 1  # trailing\n\n\n# more\ny = 2", k, 32);
  fe_token_kind want[] = {TK_IDENT, TK_ASSIGN, TK_INT, TK_NEWLINE,
                          TK_IDENT, TK_ASSIGN, TK_INT, TK_NEWLINE, TK_EOF};
  cr_assert_eq(n, 9);
  for (int i = 0; i < n; i++) cr_expect_eq(k[i], want[i], "token %d", i);
}

Test(lexer, crlf_line_ends) {
  fe_token_kind k[16];
  int n = lex_kinds("x = 1\r\ny = 2\r\n", k, 16);
  cr_expect_eq(n, 9);
}

Test(lexer, empty_input) {
  fe_token *t;
  cr_assert_eq(lex("", &t), 1);
  cr_expect_eq(t[0].kind, TK_EOF);
}

Test(lexer, control_character) {
  fe_token *t;
  cr_expect_eq(lex("x = \x01", &t), -1);
  cr_expect(strstr(capture_text(&diag), "t.flow:1:5: error: unexpected character '\\x01'"),
            "%s", capture_text(&diag));
}

Test(lexer, non_ascii_outside_strings) {
  fe_token *t;
  cr_expect_eq(lex("x = \xc3\xa9", &t), -1);
  cr_expect(strstr(capture_text(&diag), "unexpected character '\\xc3'"));
}

Test(lexer, non_ascii_inside_strings_and_comments_is_fine) {
  fe_token *t;
  cr_expect_eq(lex("# caf\xc3\xa9\nx = \"caf\xc3\xa9\"", &t), 5);
}

Test(lexer, nul_byte) {
  fe_token *t;
  size_t len = 6;
  char text[6] = {'x', ' ', '=', ' ', '\0', '1'};
  int file = fl_source_add("t.flow", text, len);
  cr_expect_eq(fe_lex(&arena, file, text, len, &t), -1);
  cr_expect(strstr(capture_text(&diag), "1:5: error: unexpected character '\\x00'"));
}

Test(lexer, every_bad_byte_is_reported_not_crashed) {
  for (int b = 0; b < 256; b++) {
    bool fine = b == ' ' || b == '\t' || b == '\r' || b == '\n' || (b >= 'a' && b <= 'z') ||
                (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') || b == '_' || b == '#' ||
                (b && strchr("()[]{},=:.+-*/;", b));
    char text[1] = {(char)b};
    fe_token *t;
    int file = fl_source_add("t.flow", text, 1);
    int n = fe_lex(&arena, file, text, 1, &t);
    if (b == '"') continue; /* an unterminated string */
    cr_expect_eq(n >= 0, fine, "byte 0x%02x", b);
  }
}

Test(lexer, single_quote_hint) {
  fe_token *t;
  cr_expect_eq(lex("x = 'a'", &t), -1);
  cr_expect(strstr(capture_text(&diag), "strings are written in double quotes"));
}
