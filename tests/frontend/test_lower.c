/* test_lower.c - lowering to the IR: the reference examples, builtins, numbers, functions, the train block. */
#include <criterion/criterion.h>

#include "test_util.h"

static diag_capture diag;

static void setup(void) { capture_begin(&diag); }
static void teardown(void) { capture_end(&diag); }

TestSuite(lower, .init = setup, .fini = teardown);

static fl_graph *load_example(const char *name, const fl_define *defines, int ndefines) {
  const char *root = getenv("FLOWC_SOURCE_ROOT");
  cr_assert(root, "FLOWC_SOURCE_ROOT is not set (run the tests with meson test)");
  char path[4096];
  snprintf(path, sizeof path, "%s/examples/%s", root, name);
  fl_graph *g = fl_frontend_load(path, defines, ndefines);
  cr_assert(g, "%s does not lower:\n%s", name, capture_text(&diag));
  return g;
}

static const fl_node *node_named(const fl_graph *g, const char *name) {
  int id = named(g, name);
  cr_assert_geq(id, 0, "no node named %s", name);
  return &g->nodes[id];
}

static const fl_node *input(const fl_graph *g, const fl_node *n, int i) {
  cr_assert_lt(i, n->ninputs);
  return &g->nodes[n->inputs[i]];
}

static fl_graph *compile_ok(const char *text) {
  fl_graph *g = compile(text);
  cr_assert(g, "does not compile:\n%s\n%s", text, capture_text(&diag));
  return g;
}

static void expect_error(const char *text, const char *message) {
  fl_graph *g = compile(text);
  bool finished = g && fl_finish(g) == 0;
  cr_expect_not(finished, "compiles, but should fail with '%s':\n%s", message, text);
  fl_graph_free(g);
  cr_expect(strstr(capture_text(&diag), message), "want '%s' in:\n%s", message, capture_text(&diag));
}

/* ---- the four reference programs ---- */

Test(lower, examples_lower_and_finish) {
  const char *examples[] = {"basic_usage.flow", "line_fit.flow", "mnist_softmax.flow", "mnist_deep.flow"};
  for (int i = 0; i < 4; i++) {
    fl_graph *g = load_example(examples[i], NULL, 0);
    cr_expect_eq(fl_finish(g), 0, "%s:\n%s", examples[i], capture_text(&diag));
    fl_graph_free(g);
  }
}

Test(lower, basic_usage) {
  fl_graph *g = load_example("basic_usage.flow", NULL, 0);
  const fl_node *state = node_named(g, "state");
  cr_expect_eq(state->op, FL_OP_VARIABLE);
  cr_expect_eq(state->ninputs, 0);
  cr_expect_eq(state->dtype, FL_I32);
  cr_assert_geq(state->attr.init, 0);
  cr_expect_eq(g->nodes[state->attr.init].op, FL_OP_CONST);
  cr_expect_eq(g->nodes[state->attr.init].dtype, FL_I32);
  const fl_node *one = node_named(g, "one");
  cr_expect_eq(one->op, FL_OP_CONST);
  cr_expect_eq(one->dtype, FL_I32);
  cr_expect_float_eq(one->attr.data[0], 1.0, 0);
  const fl_node *update = node_named(g, "update");
  cr_expect_eq(update->op, FL_OP_ASSIGN);
  cr_expect_eq(input(g, update, 0), state);
  cr_expect_eq(input(g, update, 1), node_named(g, "new_value"));
  const fl_node *m1 = node_named(g, "matrix1");
  cr_expect_eq(m1->op, FL_OP_CONST);
  cr_expect_eq(m1->dtype, FL_F32);
  cr_expect_eq(m1->attr.target.rank, 2);
  cr_expect_eq(m1->attr.target.dims[1].coef, 2);
  cr_expect_float_eq(m1->attr.data[1], 3.0, 0);
  /* `mul = mul(input1, intermed)` then `output = mul(a, b)`: values and functions are apart. */
  const fl_node *mul = node_named(g, "mul");
  cr_expect_eq(mul->op, FL_OP_MUL);
  cr_expect_eq(input(g, mul, 1), node_named(g, "intermed"));
  const fl_node *output = node_named(g, "output");
  cr_expect_eq(output->op, FL_OP_MUL);
  cr_expect_eq(input(g, output, 0), node_named(g, "a"));
  int consts = 0;
  for (int i = 0; i < g->nnodes; i++) consts += g->nodes[i].op == FL_OP_CONST;
  cr_expect_eq(consts, 7);
  /* The train block. */
  cr_expect(g->train.present);
  cr_expect_eq(g->train.steps, 3);
  cr_assert_eq(g->train.nactions, 6);
  cr_expect_eq(g->train.actions[0].when, FL_WHEN_START);
  cr_expect_eq(g->train.actions[1].kind, FL_ACT_RUN);
  cr_expect_eq(g->train.actions[1].targets[0], update->id);
  cr_expect_eq(g->train.actions[2].when, FL_WHEN_EVERY);
  cr_expect_eq(g->train.actions[2].every, 1);
  const fl_action *last = &g->train.actions[5];
  cr_expect_eq(last->when, FL_WHEN_END);
  cr_assert_eq(last->nfeeds, 2);
  cr_expect_eq(last->feeds[0].node, node_named(g, "a")->id);
  cr_expect_float_eq(last->feeds[0].value, 7.0, 0);
  cr_expect_eq(last->feeds[1].loc.line, 33);
  cr_expect_eq(last->feeds[1].loc.col, 39);
  const fl_action *two = &g->train.actions[4];
  cr_assert_eq(two->npieces, 3);
  cr_expect_eq(two->pieces[0].node, mul->id);
  cr_expect_str_eq(two->pieces[1].text, " ");
  cr_expect_eq(two->ntargets, 2);
  fl_graph_free(g);
}

Test(lower, line_fit) {
  fl_graph *g = load_example("line_fit.flow", NULL, 0);
  const fl_node *x_data = node_named(g, "x_data");
  cr_expect_eq(x_data->op, FL_OP_VARIABLE);
  cr_expect_not(x_data->attr.trainable);
  const fl_node *init = &g->nodes[x_data->attr.init];
  cr_expect_eq(init->op, FL_OP_RANDOM_UNIFORM);
  cr_expect_float_eq(init->attr.a, 0.0, 0);
  cr_expect_float_eq(init->attr.b, 1.0, 0);
  cr_expect_eq(init->attr.target.dims[0].coef, 100);
  cr_expect_geq(init->attr.stream, 0);
  const fl_node *w_init = &g->nodes[node_named(g, "W")->attr.init];
  cr_expect_neq(w_init->attr.stream, init->attr.stream);
  cr_expect(node_named(g, "W")->attr.trainable);
  /* x_data * 0.1: the number becomes an f32 scalar constant. */
  const fl_node *y_data = node_named(g, "y_data");
  const fl_node *scaled = input(g, y_data, 0);
  cr_expect_eq(scaled->op, FL_OP_MUL);
  cr_expect_eq(input(g, scaled, 1)->op, FL_OP_CONST);
  cr_expect_eq(input(g, scaled, 1)->dtype, FL_F32);
  const fl_node *train = node_named(g, "train");
  cr_expect_eq(train->op, FL_OP_MINIMIZE);
  cr_expect_eq(train->attr.optimizer, FL_OPT_SGD);
  cr_expect_float_eq(train->attr.lr, 0.5, 0);
  cr_expect_eq(input(g, train, 0), node_named(g, "loss"));
  cr_expect_eq(g->train.steps, 201);
  const fl_action *print = &g->train.actions[1];
  cr_expect(print->pieces[0].is_step);
  cr_expect_eq(print->ntargets, 2);
  fl_graph_free(g);
}

Test(lower, mnist_deep) {
  fl_graph *g = load_example("mnist_deep.flow", NULL, 0);
  const fl_node *pool = node_named(g, "h_pool2");
  cr_expect_eq(pool->op, FL_OP_MAX_POOL);
  cr_expect_eq(pool->attr.ksize[0], 2);
  cr_expect_eq(pool->attr.strides[1], 2);
  cr_expect_eq(pool->attr.padding, FL_PAD_SAME);
  /* Nodes from a function expansion point at the model's call. */
  cr_expect_eq(pool->loc.line, 20);
  cr_expect_eq(pool->loc.col, 11);
  const fl_node *conv = input(g, node_named(g, "h_conv1"), 0);
  conv = input(g, conv, 0);
  cr_expect_eq(conv->op, FL_OP_CONV2D);
  cr_expect_eq(conv->attr.strides[0], 1);
  const fl_node *x_image = node_named(g, "x_image");
  cr_expect_eq(x_image->op, FL_OP_RESHAPE);
  cr_expect_eq(x_image->attr.target.rank, 4);
  cr_expect_eq(x_image->attr.target.dims[0].coef, -1);
  cr_expect_eq(node_named(g, "h_pool2_flat")->attr.target.dims[1].coef, 3136);
  const fl_node *w = node_named(g, "W_conv1");
  const fl_node *w_init = &g->nodes[w->attr.init];
  cr_expect_eq(w_init->op, FL_OP_TRUNCATED_NORMAL);
  cr_expect_float_eq(w_init->attr.b, 0.1, 1e-12);
  cr_expect_eq(w_init->attr.target.dims[3].coef, 32);
  const fl_node *b_init = &g->nodes[node_named(g, "b_conv1")->attr.init];
  cr_expect_eq(b_init->op, FL_OP_FILL);
  cr_expect_float_eq(b_init->attr.value, 0.1, 1e-12);
  const fl_node *drop = node_named(g, "h_fc1_drop");
  cr_expect_eq(drop->op, FL_OP_MUL);
  const fl_node *mask = input(g, drop, 1);
  cr_expect_eq(mask->op, FL_OP_DROPOUT_MASK);
  cr_expect_eq(input(g, mask, 1), node_named(g, "keep_prob"));
  cr_expect_geq(mask->attr.stream, 0);
  const fl_node *xent = input(g, node_named(g, "cross_entropy"), 0);
  cr_expect_eq(xent->op, FL_OP_SOFTMAX_XENT);
  cr_expect_eq(input(g, xent, 0), node_named(g, "y_"));
  const fl_node *step = node_named(g, "train_step");
  cr_expect_eq(step->op, FL_OP_MINIMIZE);
  cr_expect_eq(step->attr.optimizer, FL_OPT_ADAM);
  cr_expect_float_eq(step->attr.lr, 1e-4, 1e-15);
  cr_expect_float_eq(step->attr.beta2, 0.999, 1e-15);
  const fl_node *am = input(g, node_named(g, "correct_prediction"), 0);
  cr_expect_eq(am->op, FL_OP_ARGMAX);
  cr_expect_eq(am->dtype, FL_I64);
  cr_expect_eq(am->attr.axes[0], 1);
  cr_expect_eq(node_named(g, "correct_prediction")->dtype, FL_BOOL);
  cr_expect_eq(g->train.data, FL_DATA_MNIST);
  cr_expect_str_eq(g->train.data_dir, "MNIST_data");
  cr_expect_eq(g->train.images_node, node_named(g, "x")->id);
  cr_expect_eq(g->train.labels_node, node_named(g, "y_")->id);
  cr_expect_eq(g->train.batch, 50);
  cr_expect_eq(g->train.steps, 20000);
  cr_assert_eq(g->train.nactions, 3);
  cr_expect_eq(g->train.actions[2].when, FL_WHEN_TEST);
  /* After the passes: the shapes the tutorial comments give. */
  cr_assert_eq(fl_finish(g), 0, "%s", capture_text(&diag));
  char shape[64];
  const fl_node *pooled = node_named(g, "h_pool2");
  cr_expect_str_eq(fl_shape_str(g, &pooled->shape, shape, sizeof shape), "[N, 7, 7, 64]");
  fl_graph_free(g);
}

Test(lower, define_replaces_a_top_level_number) {
  fl_graph *g = load_example("mnist_softmax.flow", NULL, 0);
  cr_expect_float_eq(node_named(g, "train_step")->attr.lr, 0.5, 0);
  fl_graph_free(g);
  fl_define lr = {"lr", 0.1};
  g = load_example("mnist_softmax.flow", &lr, 1);
  cr_expect_float_eq(node_named(g, "train_step")->attr.lr, 0.1, 0);
  fl_graph_free(g);
}

Test(lower, define_that_matches_nothing) {
  fl_define bogus = {"learning_rate", 0.1};
  fl_graph *g = fl_frontend_parse("t.flow", "x = constant(1.0)\n", 18, &bogus, 1);
  cr_expect_null(g);
  cr_expect(strstr(capture_text(&diag), "flowc: error: define 'learning_rate' matches no assignment"),
            "%s", capture_text(&diag));
}

Test(lower, define_with_integer_value_is_an_integer) {
  fl_define n = {"n", 3};
  const char *text = "n = 5\nz = zeros([n])\n";
  fl_graph *g = fl_frontend_parse("t.flow", text, strlen(text), &n, 1);
  cr_assert(g, "%s", capture_text(&diag));
  cr_expect_eq(node_named(g, "z")->attr.target.dims[0].coef, 3);
  fl_graph_free(g);
}

/* ---- numbers and dtypes ---- */

Test(lower, number_literals_typing) {
  fl_graph *g = compile_ok("i = constant(1)\nf = constant(1.0)\nv = variable(0)\n"
                           "d = constant(2, dtype=f32)\nb = constant(true)\n");
  cr_expect_eq(node_named(g, "i")->dtype, FL_I32);
  cr_expect_eq(node_named(g, "f")->dtype, FL_F32);
  cr_expect_eq(node_named(g, "v")->dtype, FL_I32);
  cr_expect_eq(node_named(g, "d")->dtype, FL_F32);
  cr_expect_eq(node_named(g, "b")->dtype, FL_BOOL);
  fl_graph_free(g);
}

Test(lower, number_takes_the_tensor_dtype) {
  fl_graph *g = compile_ok("i = constant(1)\nj = i * 2\nk = 3 - i\n");
  const fl_node *j = node_named(g, "j");
  cr_expect_eq(j->dtype, FL_I32);
  cr_expect_eq(input(g, j, 1)->dtype, FL_I32);
  const fl_node *k = node_named(g, "k");
  cr_expect_eq(k->op, FL_OP_SUB);
  cr_expect_eq(input(g, k, 0)->dtype, FL_I32);
  cr_expect_float_eq(input(g, k, 0)->attr.data[0], 3.0, 0);
  fl_graph_free(g);
}

Test(lower, numbers_fold) {
  fl_graph *g = compile_ok("n = 7 * 7 * 64\nh = n / 2\nx = placeholder(f32, [None, 3136])\n"
                           "r = reshape(x, [-1, n])\nneg = -n\nz = zeros([-neg])\n");
  cr_expect_eq(node_named(g, "r")->attr.target.dims[1].coef, 3136);
  cr_expect_eq(node_named(g, "z")->attr.target.dims[0].coef, 3136);
  cr_expect_eq(g->nnodes, 3);
  fl_graph_free(g);
}

Test(lower, division_of_numbers_is_fractional) {
  expect_error("z = zeros([4 / 2])\n", "zeros: shape must be a list of integers, found a fractional number");
}

Test(lower, dtype_mismatch_is_found) {
  expect_error("a = constant(1)\nb = constant(1.0)\nc = a + b\n", "t.flow:3:7: error: add: dtypes differ: i32 and f32");
}

/* ---- names ---- */

Test(lower, alias_keeps_the_first_name) {
  const char *alias = "a = constant(1.0)\nb = a\nc = b * 2.0\n";
  fe_bindings names;
  fl_graph *g = fe_compile_text("t.flow", alias, strlen(alias), NULL, 0, &names);
  cr_assert(g, "%s", capture_text(&diag));
  cr_expect_eq(g->nnodes, 3);
  cr_expect_str_eq(g->nodes[0].name, "a");
  cr_assert_eq(names.count, 3);
  cr_expect_str_eq(names.items[1].name, "b");
  cr_expect_str_eq(names.items[1].node_name, "a");
  cr_expect_eq(names.items[1].node, 0);
  cr_expect_eq(input(g, &g->nodes[2], 0)->id, 0);
  fe_bindings_free(&names);
  fl_graph_free(g);
}

Test(lower, rebinding_a_name) {
  fl_graph *g = compile_ok("x = constant(1.0)\nx = x + 1.0\ny = x\n");
  const fl_node *x = node_named(g, "x");
  cr_expect_eq(x->op, FL_OP_ADD);
  fl_graph_free(g);
}

Test(lower, none_and_n_are_one_symbol) {
  fl_graph *g = compile_ok("a = placeholder(f32, [None, 3])\nb = placeholder(f32, [N, 3])\nc = a + b\n");
  cr_expect_eq(g->nsyms, 1);
  cr_expect_str_eq(g->syms[0], "N");
  cr_expect_eq(node_named(g, "a")->attr.target.dims[0].sym, 0);
  cr_expect_eq(node_named(g, "b")->attr.target.dims[0].sym, 0);
  cr_expect_eq(fl_finish(g), 0, "%s", capture_text(&diag));
  fl_graph_free(g);
}

Test(lower, shape_through_a_user_function) {
  fl_graph *g = compile_ok("def input(n) = placeholder(f32, [N, n])\ns = [Batch, 4]\n"
                           "x = input(784)\nt = placeholder(f32, s)\n");
  cr_expect_eq(node_named(g, "x")->attr.target.dims[1].coef, 784);
  cr_expect_eq(g->nsyms, 2);
  fl_graph_free(g);
}

Test(lower, undefined_name_with_suggestion) {
  expect_error("weights = constant(1.0)\ny = weight * 2.0\n", "t.flow:2:5: error: undefined name 'weight' (did you mean 'weights'?)");
}

Test(lower, several_independent_errors_are_all_reported) {
  fl_graph *g = compile("a = relu(nope)\nb = frobnicate(1)\nc = constant(1.0)\nd = c + nope2\n");
  cr_expect_null(g);
  cr_expect_eq(fl_error_count(), 3, "%s", capture_text(&diag));
}

Test(lower, errors_do_not_cascade) {
  fl_graph *g = compile("a = relu(nope)\nb = a * 2.0\nc = relu(b)\n");
  cr_expect_null(g);
  cr_expect_eq(fl_error_count(), 1, "%s", capture_text(&diag));
}

/* ---- functions ---- */

Test(lower, user_function_keywords_and_shadowing) {
  fl_graph *g = compile_ok("def relu(x, scale) = relu(x) * scale\n"
                           "x = placeholder(f32, [2])\ny = relu(scale=3.0, x=x)\n");
  const fl_node *y = node_named(g, "y");
  cr_expect_eq(y->op, FL_OP_MUL);
  cr_expect_eq(input(g, y, 0)->op, FL_OP_RELU);
  fl_graph_free(g);
}

Test(lower, functions_are_visible_before_their_def) {
  fl_graph *g = compile_ok("y = double(constant(2.0))\ndef double(v) = v + v\n");
  cr_expect_eq(node_named(g, "y")->op, FL_OP_ADD);
  fl_graph_free(g);
}

Test(lower, error_in_function_notes_the_call) {
  expect_error("def bad(x) = reshape(x, 3.5)\nx = placeholder(f32, [2])\ny = bad(x)\n",
               "t.flow:3:5: note: in call to bad here");
}

Test(lower, recursion) {
  expect_error("def f(x) = f(x)\ny = f(1.0)\n", "t.flow:1:12: error: recursion: f calls itself");
  expect_error("def f(x) = g(x)\ndef g(x) = h(x)\ndef h(x) = f(x)\ny = f(1.0)\n",
               "recursion: f calls itself through g, h");
}

Test(lower, exponential_expansion_is_cut_off) {
  char text[4096] = "def f0(x) = x + x\n";
  for (int i = 1; i < 40; i++)
    snprintf(text + strlen(text), sizeof text - strlen(text), "def f%d(x) = f%d(x) + f%d(x)\n", i, i - 1, i - 1);
  strcat(text, "y = f39(constant(1.0))\n");
  expect_error(text, "too many function calls");
}

/* ---- builtins ---- */

Test(lower, reductions_and_aliases) {
  fl_graph *g = compile_ok("x = placeholder(f32, [N, 3, 4])\n"
                           "a = reduce_sum(x)\nb = reduce_mean(x, 1, true)\n"
                           "c = sum(x, reduction_indices=[0, -1], keep_dims=True)\nd = mean(x, axis=-1)\n");
  cr_expect_eq(node_named(g, "a")->attr.naxes, 0);
  const fl_node *b = node_named(g, "b");
  cr_expect_eq(b->op, FL_OP_REDUCE_MEAN);
  cr_expect_eq(b->attr.naxes, 1);
  cr_expect(b->attr.keepdims);
  const fl_node *c = node_named(g, "c");
  cr_expect_eq(c->op, FL_OP_REDUCE_SUM);
  cr_expect_eq(c->attr.naxes, 2);
  cr_expect_eq(c->attr.axes[1], -1);
  cr_expect(c->attr.keepdims);
  cr_expect_eq(fl_finish(g), 0, "%s", capture_text(&diag));
  char shape[64];
  cr_expect_str_eq(fl_shape_str(g, &node_named(g, "d")->shape, shape, sizeof shape), "[N, 3]");
  fl_graph_free(g);
}

Test(lower, matmul_transpose_and_tf_names) {
  fl_graph *g = compile_ok("a = constant([[1.0, 2.0]])\nm = matmul(a, a, transpose_b=true)\n"
                           "o = AdamOptimizer(0.01)\nv = Variable(zeros([2]))\ns = subtract(v, multiply(v, 2.0))\n");
  cr_expect(node_named(g, "m")->attr.transpose_b);
  cr_expect_not(node_named(g, "m")->attr.transpose_a);
  cr_expect_eq(node_named(g, "s")->op, FL_OP_SUB);
  fl_graph_free(g);
}

Test(lower, momentum_optimizer) {
  fl_graph *g = compile_ok("w = variable(1.0)\nt = momentum(0.1, 0.9).minimize(w * w)\n");
  const fl_node *t = node_named(g, "t");
  cr_expect_eq(t->attr.optimizer, FL_OPT_MOMENTUM);
  cr_expect_float_eq(t->attr.momentum, 0.9, 0);
  fl_graph_free(g);
}

Test(lower, constant_with_shape_is_a_fill) {
  fl_graph *g = compile_ok("c = constant(0.1, shape=[2, 3])\nl = constant([1, 2, 3, 4], shape=[2, 2], dtype=f32)\n");
  const fl_node *c = node_named(g, "c");
  cr_expect_eq(c->op, FL_OP_FILL);
  cr_expect_float_eq(c->attr.value, 0.1, 0);
  cr_expect_eq(c->attr.target.rank, 2);
  const fl_node *l = node_named(g, "l");
  cr_expect_eq(l->op, FL_OP_CONST);
  cr_expect_eq(l->dtype, FL_F32);
  cr_expect_eq(l->attr.target.dims[1].coef, 2);
  cr_expect_float_eq(l->attr.data[3], 4.0, 0);
  fl_graph_free(g);
}

Test(lower, dropout_with_a_number) {
  fl_graph *g = compile_ok("x = placeholder(f32, [N, 4])\nd = dropout(x, 0.5)\n");
  const fl_node *mask = input(g, node_named(g, "d"), 1);
  cr_expect_eq(mask->op, FL_OP_DROPOUT_MASK);
  cr_expect_eq(input(g, mask, 1)->op, FL_OP_CONST);
  cr_expect_eq(input(g, mask, 1)->dtype, FL_F32);
  fl_graph_free(g);
}

Test(lower, cast_and_equal) {
  fl_graph *g = compile_ok("a = constant([1, 2])\nb = cast(a, f32)\ne = equal(a, 2)\n");
  cr_expect_eq(node_named(g, "b")->dtype, FL_F32);
  cr_expect_eq(node_named(g, "e")->dtype, FL_BOOL);
  cr_expect_eq(input(g, node_named(g, "e"), 1)->dtype, FL_I32);
  fl_graph_free(g);
}

Test(lower, random_ops_only_initialise_variables) {
  fl_graph *g = compile_ok("w = variable(random_normal([3], stddev=2.0) * 0.5)\n");
  fl_graph_free(g);
  expect_error("r = random_uniform([3])\n", "t.flow:1:5: error: random_uniform can only initialise a variable");
  expect_error("w = variable(1.0)\nr = w + truncated_normal([1])\n", "truncated_normal can only initialise a variable");
}

Test(lower, assign_needs_a_variable) {
  expect_error("c = constant(1.0)\nu = assign(c, 2.0)\n", "t.flow:2:12: error: assign: ref must be a variable, found the result of const");
}

Test(lower, unknown_function_suggestion) {
  expect_error("x = constant([[1.0]])\ny = matmull(x, x)\n", "unknown function 'matmull' (did you mean 'matmul'?)");
  expect_error("y = reduce_summ(1.0)\n", "did you mean 'reduce_sum'?");
}

Test(lower, argument_errors) {
  expect_error("y = relu()\n", "relu: missing argument 'features'");
  expect_error("y = relu(1.0, 2.0)\n", "relu: too many arguments");
  expect_error("x = constant(1.0)\ny = reduce_sum(x, axes=0)\n", "reduce_sum has no argument 'axes' (did you mean 'axis'?)");
  expect_error("x = placeholder(f32, [N, 28, 28, 1])\ny = max_pool(x, [1, 2, 2, 1], [2, 2, 2, 1], \"SAME\")\n",
               "max_pool: strides must be a list of 4 integers [1, h, w, 1]");
  expect_error("x = placeholder(f32, [N, 8])\ny = reshape(x, [N, 8])\n", "undefined name 'N'");
  expect_error("x = placeholder(f32, [2])\ny = argmax(x, [0, 1])\n", "argmax: axis must be one integer");
}

/* ---- the train block ---- */

Test(lower, print_format_escapes_and_step) {
  fl_graph *g = compile_ok("loss = constant(1.0)\ntrain {\n  print \"{{loss}} = {loss} at {step}\\n\"\n}\n");
  const fl_action *a = &g->train.actions[0];
  cr_assert_eq(a->npieces, 5);
  cr_expect_str_eq(a->pieces[0].text, "{loss} = ");
  cr_expect_eq(a->pieces[1].node, named(g, "loss"));
  cr_expect_str_eq(a->pieces[2].text, " at ");
  cr_expect(a->pieces[3].is_step);
  cr_expect_str_eq(a->pieces[4].text, "\n");
  cr_expect_eq(a->ntargets, 1);
  fl_graph_free(g);
}

Test(lower, print_slot_error_points_inside_the_string) {
  expect_error("loss = constant(1.0)\ntrain {\n  print \"a\\tb {los}\"\n}\n",
               "t.flow:3:16: error: print: undefined name 'los' (did you mean 'loss'?)");
}

Test(lower, train_settings) {
  fl_graph *g = compile_ok("x = placeholder(f32, [N, 784])\nlabels = placeholder(f32, [N, 10])\nb = 25\n"
                           "train {\n  data = mnist(\"D\", labels=labels)\n  batch = b * 2\n  steps = 0\n"
                           "  seed = 42\n  validation = 0\n}\n");
  cr_expect_eq(g->train.batch, 50);
  cr_expect_eq(g->train.steps, 0);
  cr_expect_eq(g->train.seed, 42u);
  cr_expect_eq(g->train.validation, 0);
  cr_expect_str_eq(g->train.data_dir, "D");
  cr_expect_eq(g->train.labels_node, named(g, "labels"));
  fl_graph_free(g);
}

Test(lower, train_errors) {
  expect_error("x = constant(1.0)\ntrain {\n  steps = -1\n}\n", "steps must be a non-negative integer");
  expect_error("x = constant(1.0)\ntrain {\n  seed = 1.5\n}\n", "seed must be a non-negative integer, found a fractional number");
  expect_error("x = constant(1.0)\ntrain {\n  run y\n}\n", "t.flow:3:7: error: run: undefined name 'y'");
  expect_error("x = constant(1.0)\ntrain {\n  print \"{}\"\n}\n", "print: empty slot");
  expect_error("x = constant(1.0)\ntrain {\n  print \"{x:.3f}\"\n}\n", "print: 'x:.3f' is not a name");
  expect_error("x = constant(1.0)\ntrain {\n  data = 3\n}\n", "data must be a data set");
  expect_error("w = variable(1.0)\nt = adam().minimize(w * w)\ntrain {\n  print \"{t}\"\n}\n",
               "t.flow:4:11: error: print: 't' is a train op: it can be run, but has no value");
}

/* ---- robustness ---- */

Test(lower, empty_and_comment_only_files) {
  expect_error("", "t.flow:1:1: error: empty description: no tensors defined");
  expect_error("# nothing here\n\n", "t.flow:1:1: error: empty description");
}

/* Random bytes and mutated examples: whatever happens, no crash (run under
 * AddressSanitizer to also catch bad reads and leaks). */
Test(lower, random_inputs_do_not_crash) {
  const char *root = getenv("FLOWC_SOURCE_ROOT");
  cr_assert(root);
  char path[4096];
  snprintf(path, sizeof path, "%s/examples/mnist_deep.flow", root);
  FILE *f = fopen(path, "rb");
  cr_assert(f);
  char base[8192];
  size_t len = fread(base, 1, sizeof base, f);
  fclose(f);
  uint64_t state = 12345;
  for (int round = 0; round < 400; round++) {
    char buf[8192];
    size_t n;
    if (round % 4 == 0) {
      n = (size_t)(state % 300);
      for (size_t i = 0; i < n; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        buf[i] = (char)(state >> 56);
      }
    } else {
      memcpy(buf, base, len);
      n = len;
      for (int k = 0; k < 1 + round % 5; k++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t at = (size_t)(state >> 33) % n;
        const char *pieces = "()[]{},=:.+-*/;\n\"#xN0-1e";
        buf[at] = pieces[(state >> 20) % strlen(pieces)];
      }
    }
    fl_diag_reset();
    fl_graph *g = fl_frontend_parse("fuzz.flow", buf, n, NULL, 0);
    if (g) fl_finish(g);
    fl_graph_free(g);
  }
}
