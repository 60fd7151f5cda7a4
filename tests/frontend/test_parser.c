/* test_parser.c - the syntax tree: statements, precedence, calls, the train block, syntax errors. */
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

TestSuite(parser, .init = setup, .fini = teardown);

static int parse(const char *text, fe_program *prog) {
  int file = fl_source_add("t.flow", text, strlen(text));
  fe_token *toks;
  int n = fe_lex(&arena, file, text, strlen(text), &toks);
  if (n < 0) return -1;
  return fe_parse(&arena, toks, n, prog);
}

static const fe_expr *value_of(const char *text) {
  static fe_program prog;
  cr_assert_eq(parse(text, &prog), 0, "%s", capture_text(&diag));
  cr_assert_eq(prog.nstmts, 1);
  return prog.stmts[0].value;
}

Test(parser, assignment) {
  fe_program p;
  cr_assert_eq(parse("x = 1\ny = x", &p), 0);
  cr_assert_eq(p.nstmts, 2);
  cr_expect_eq(p.stmts[0].kind, ST_ASSIGN);
  cr_expect_str_eq(p.stmts[0].name, "x");
  cr_expect_eq(p.stmts[1].value->kind, EX_NAME);
}

Test(parser, semicolons_separate_statements) {
  fe_program p;
  cr_assert_eq(parse("x = 1; y = 2;; z = 3", &p), 0);
  cr_expect_eq(p.nstmts, 3);
}

Test(parser, multiplication_binds_tighter_than_addition) {
  const fe_expr *e = value_of("v = a + b * c");
  cr_assert_eq(e->kind, EX_BINARY);
  cr_expect_eq(e->op, '+');
  cr_expect_eq(e->rhs->kind, EX_BINARY);
  cr_expect_eq(e->rhs->op, '*');
}

Test(parser, left_associative) {
  const fe_expr *e = value_of("v = a - b - c");
  cr_assert_eq(e->kind, EX_BINARY);
  cr_expect_eq(e->lhs->kind, EX_BINARY);
  cr_expect_str_eq(e->rhs->name, "c");
}

Test(parser, unary_minus_binds_tighter_than_multiplication) {
  const fe_expr *e = value_of("v = -a * b");
  cr_assert_eq(e->kind, EX_BINARY);
  cr_expect_eq(e->op, '*');
  cr_expect_eq(e->lhs->kind, EX_NEG);
}

Test(parser, parentheses) {
  const fe_expr *e = value_of("v = (a + b) * c");
  cr_assert_eq(e->kind, EX_BINARY);
  cr_expect_eq(e->op, '*');
  cr_expect_eq(e->lhs->op, '+');
}

Test(parser, calls_with_keywords) {
  const fe_expr *e = value_of("v = conv2d(x, W, strides=[1, 1, 1, 1], padding=\"SAME\",)");
  cr_assert_eq(e->kind, EX_CALL);
  cr_expect_str_eq(e->name, "conv2d");
  cr_assert_eq(e->nargs, 4);
  cr_expect_null(e->args[0].name);
  cr_expect_str_eq(e->args[2].name, "strides");
  cr_expect_eq(e->args[2].value->kind, EX_LIST);
  cr_expect_eq(e->args[2].value->nitems, 4);
  cr_expect_str_eq(e->args[3].value->str, "SAME");
}

Test(parser, method_call_chain) {
  const fe_expr *e = value_of("t = adam(1e-4).minimize(loss)");
  cr_assert_eq(e->kind, EX_METHOD);
  cr_expect_str_eq(e->name, "minimize");
  cr_expect_eq(e->lhs->kind, EX_CALL);
  cr_expect_eq(e->nargs, 1);
  cr_expect_eq(e->loc.col, 16);
}

Test(parser, nested_lists_and_trailing_comma) {
  const fe_expr *e = value_of("c = [[1, 2], [3, 4],]");
  cr_assert_eq(e->kind, EX_LIST);
  cr_expect_eq(e->nitems, 2);
  cr_expect_eq(e->items[1]->nitems, 2);
}

Test(parser, multi_line_call) {
  const fe_expr *e = value_of("y = matmul(\n  x,\n  W\n)");
  cr_expect_eq(e->nargs, 2);
}

Test(parser, def) {
  fe_program p;
  cr_assert_eq(parse("def conv2d(x, W) = conv2d(x, W, padding=\"SAME\")", &p), 0);
  cr_expect_eq(p.stmts[0].kind, ST_DEF);
  cr_expect_str_eq(p.stmts[0].name, "conv2d");
  cr_expect_eq(p.stmts[0].nparams, 2);
  cr_expect_str_eq(p.stmts[0].params[1], "W");
}

Test(parser, train_is_also_a_variable_name) {
  fe_program p;
  cr_assert_eq(parse("train = gradient_descent(0.5).minimize(loss)\ntrain {\n run train\n}", &p), 0);
  cr_expect_eq(p.stmts[0].kind, ST_ASSIGN);
  cr_expect_eq(p.stmts[1].kind, ST_TRAIN);
}

Test(parser, train_block) {
  fe_program p;
  cr_assert_eq(parse("train {\n"
                     "  data = mnist(\"MNIST_data\")   # comment\n"
                     "\n"
                     "  batch = 50\n"
                     "  every 100: print \"step {step}\" with keep_prob = 1.0\n"
                     "  run a, b with keep_prob = 0.5, rate = -2\n"
                     "  start: run init\n"
                     "  end: print \"done\"\n"
                     "  test: print \"{accuracy}\"\n"
                     "}\n",
                     &p),
            0, "%s", capture_text(&diag));
  cr_assert_eq(p.nstmts, 1);
  const fe_stmt *t = &p.stmts[0];
  cr_assert_eq(t->ntrain, 7);
  cr_expect_eq(t->train[0].kind, TS_SETTING);
  cr_expect_str_eq(t->train[1].name, "batch");
  cr_expect_eq(t->train[2].when, FL_WHEN_EVERY);
  cr_expect_eq(t->train[2].every, 100);
  cr_expect_eq(t->train[2].action, FL_ACT_PRINT);
  cr_expect_eq(t->train[2].nfeeds, 1);
  cr_expect_eq(t->train[3].when, FL_WHEN_STEP);
  cr_expect_eq(t->train[3].ntargets, 2);
  cr_expect_eq(t->train[3].nfeeds, 2);
  cr_expect_float_eq(t->train[3].feeds[1].value, -2.0, 1e-12);
  cr_expect_eq(t->train[4].when, FL_WHEN_START);
  cr_expect_eq(t->train[5].when, FL_WHEN_END);
  cr_expect_eq(t->train[6].when, FL_WHEN_TEST);
}

Test(parser, train_block_closing_brace_on_the_action_line) {
  fe_program p;
  cr_expect_eq(parse("train { run a }", &p), 0, "%s", capture_text(&diag));
}

static void expect_error(const char *text, const char *message) {
  fe_program p;
  cr_expect_eq(parse(text, &p), -1, "%s", text);
  cr_expect(strstr(capture_text(&diag), message), "want '%s' in:\n%s", message, capture_text(&diag));
}

Test(parser, missing_close_paren) {
  expect_error("x = relu(a\ny = 1", "t.flow:2:1: error: expected ',' or ')' to close the '(' at 1:9, found name 'y'");
}

Test(parser, stray_token) { expect_error("x = a b", "1:7: error: expected the end of the line after the statement, found name 'b'"); }
Test(parser, missing_value) { expect_error("x =\n", "1:4: error: expected an expression, found end of line"); }
Test(parser, positional_after_keyword) { expect_error("x = f(a=1, 2)", "1:12: error: positional argument after keyword argument"); }
Test(parser, keyword_twice) { expect_error("x = f(a=1, a=2)", "1:12: error: argument 'a' is given twice"); }
Test(parser, method_without_call) { expect_error("x = a.b", "expected '(' after the method name"); }
Test(parser, bad_statement) { expect_error("(x) = 1", "1:1: error: expected a statement"); }
Test(parser, train_without_brace_close) { expect_error("train {\n run a\n", "1:7: error: the train block's '{' is never closed"); }
Test(parser, every_needs_integer) { expect_error("train {\n every x: run a\n}", "2:8: error: expected a number of steps after 'every'"); }
Test(parser, feed_needs_number) { expect_error("train {\n run a with k = b\n}", "2:17: error: expected a number to feed to 'k'"); }
Test(parser, fed_twice) { expect_error("train {\n run a with k = 1, k = 2\n}", "'k' is fed twice"); }

Test(parser, deep_nesting_is_an_error_not_a_crash) {
  size_t n = 100000;
  char *text = malloc(2 * n + 8);
  strcpy(text, "x = ");
  memset(text + 4, '[', n);
  text[4 + n] = '\0';
  expect_error(text, "expression nested too deeply");
  memset(text + 4, '-', n);
  expect_error(text, "expression nested too deeply");
  memset(text + 4, '(', n);
  expect_error(text, "expression nested too deeply");
  free(text);
}

Test(parser, nesting_below_the_limit_is_fine) {
  char text[600] = "x = ";
  for (int i = 0; i < 150; i++) strcat(text, "(");
  strcat(text, "1");
  for (int i = 0; i < 150; i++) strcat(text, ")");
  fe_program p;
  cr_expect_eq(parse(text, &p), 0, "%s", capture_text(&diag));
}
