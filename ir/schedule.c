/* schedule.c - fusion: the kernels of one run, their order, and each buffer's lifetime.
 *
 * A run's nodes are grouped greedily, most valuable fusion first:
 *   1. GEMM epilogues: matmul/conv2d whose only reader adds a bias over the
 *      last axis, and maybe a relu after it: the bias and relu are applied in
 *      place on the GEMM's output, so two full passes over memory disappear;
 *   2. softmax cross-entropy with its gradient: both come from one softmax;
 *   3. elementwise trees: an elementwise node absorbs producers of the same
 *      shape that nobody else reads; the tree becomes one loop and only its
 *      root is stored;
 *   4. a weight gradient that only gradient descent reads is never stored:
 *      its GEMM subtracts lr times the product from the weight in place;
 *   5. every other optimizer update of the run becomes one kernel.
 * Groups are then ordered by their dependencies (Kahn's algorithm, earliest
 * original node first), which keeps the schedule close to the program order. */
#include <stdlib.h>
#include <string.h>

#include "ir.h"

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) {
    fputs("flowc: out of memory\n", stderr);
    exit(1);
  }
  return p;
}

/* Nodes a kernel computes; the others are sources, aliases or bookkeeping. */
static bool computed(fl_op op) {
  switch (op) {
  case FL_OP_PLACEHOLDER: case FL_OP_VARIABLE: case FL_OP_CONST: case FL_OP_RESHAPE:
  case FL_OP_GROUP: case FL_OP_ASSIGN: case FL_OP_MINIMIZE: case FL_OP_RANDOM_UNIFORM:
  case FL_OP_TRUNCATED_NORMAL: case FL_OP_RANDOM_NORMAL:
    return false;
  default:
    return true;
  }
}

static bool is_update(fl_op op) {
  return op == FL_OP_APPLY_SGD || op == FL_OP_APPLY_MOMENTUM || op == FL_OP_APPLY_ADAM;
}

int fl_storage_of(const fl_graph *g, int node) {
  while (g->nodes[node].op == FL_OP_RESHAPE || g->nodes[node].op == FL_OP_ASSIGN)
    node = g->nodes[node].inputs[g->nodes[node].op == FL_OP_ASSIGN ? 1 : 0];
  return node;
}

typedef struct {
  const fl_graph *g;
  const bool *needed, *fed;
  bool *in_run;   /* computed by this run */
  int *uses;      /* readers in this run, fetches counted */
  int *reader;    /* the last reader seen (the only one when uses == 1) */
  bool *fetched;
  fl_schedule *s;
} planner;

static int new_group(planner *p, fl_group_kind kind) {
  fl_schedule *s = p->s;
  fl_group *grown = realloc(s->groups, (size_t)(s->ngroups + 1) * sizeof *grown);
  if (!grown) abort();
  s->groups = grown;
  fl_group *grp = &s->groups[s->ngroups];
  memset(grp, 0, sizeof *grp);
  grp->kind = kind;
  grp->nodes = xcalloc((size_t)p->g->nnodes, sizeof(int));
  grp->root = -1;
  return s->ngroups++;
}

static void add_member(planner *p, int group, int node) {
  fl_group *grp = &p->s->groups[group];
  grp->nodes[grp->nnodes++] = node;
  p->s->group_of[node] = group;
}

static bool free_in_run(const planner *p, int node) {
  return p->in_run[node] && p->s->group_of[node] < 0;
}

/* The only reader of `node` in this run, when it has exactly one and is not fetched. */
static int sole_reader(const planner *p, int node) {
  return p->uses[node] == 1 && !p->fetched[node] ? p->reader[node] : -1;
}

static void fuse_epilogues(planner *p) {
  const fl_graph *g = p->g;
  for (int m = 0; m < g->nnodes; m++) {
    const fl_node *gemm = &g->nodes[m];
    if (!free_in_run(p, m) || gemm->dtype != FL_F32 || (gemm->op != FL_OP_MATMUL && gemm->op != FL_OP_CONV2D))
      continue;
    int add = sole_reader(p, m);
    if (add < 0 || !free_in_run(p, add) || g->nodes[add].op != FL_OP_ADD) continue;
    const fl_node *a = &g->nodes[add];
    int bias = a->inputs[0] == m ? a->inputs[1] : a->inputs[0];
    const fl_shape *bs = &g->nodes[bias].shape;
    fl_dim channels = gemm->shape.dims[gemm->shape.rank - 1];
    if (bias == m || bs->rank != 1 || !fl_dim_eq(bs->dims[0], channels) || !fl_shape_eq(&a->shape, &gemm->shape))
      continue;
    int group = new_group(p, FL_GROUP_EPILOGUE);
    add_member(p, group, m);
    add_member(p, group, add);
    int relu = sole_reader(p, add);
    if (relu >= 0 && free_in_run(p, relu) && g->nodes[relu].op == FL_OP_RELU) add_member(p, group, relu);
    fl_group *grp = &p->s->groups[group];
    grp->root = grp->nodes[grp->nnodes - 1];
  }
}

static void fuse_softmax_xent(planner *p) {
  const fl_graph *g = p->g;
  bool *ancestors = xcalloc((size_t)g->nnodes, sizeof(bool));
  for (int x = 0; x < g->nnodes; x++) {
    if (!free_in_run(p, x) || g->nodes[x].op != FL_OP_SOFTMAX_XENT) continue;
    for (int d = x + 1; d < g->nnodes; d++) {
      const fl_node *grad = &g->nodes[d];
      if (!free_in_run(p, d) || grad->op != FL_OP_SOFTMAX_XENT_GRAD ||
          grad->inputs[0] != g->nodes[x].inputs[0] || grad->inputs[1] != g->nodes[x].inputs[1])
        continue;
      /* One kernel makes both, so the incoming gradient must not depend on the loss. */
      int dy = grad->inputs[2];
      fl_mark_needed(g, &dy, 1, NULL, ancestors);
      if (ancestors[x]) continue;
      int group = new_group(p, FL_GROUP_SOFTMAX_XENT);
      add_member(p, group, x);
      add_member(p, group, d);
      break;
    }
  }
  free(ancestors);
}

/* A relu before a max_pool: the pool's gradient goes only to window maxima,
 * and the relu's gradient keeps it where the maximum is positive. One pass
 * writes the masked gradient instead of two over the pool's input size. */
static void fuse_pool_grad_relu(planner *p) {
  const fl_graph *g = p->g;
  for (int m = 0; m < g->nnodes; m++) {
    const fl_node *pool = &g->nodes[m];
    if (!free_in_run(p, m) || pool->op != FL_OP_MAX_POOL_GRAD || pool->dtype != FL_F32) continue;
    int r = sole_reader(p, m);
    if (r < 0 || !free_in_run(p, r)) continue;
    const fl_node *relu = &g->nodes[r];
    if (relu->op != FL_OP_RELU_GRAD || relu->inputs[0] != m || relu->inputs[1] != pool->inputs[0]) continue;
    int group = new_group(p, FL_GROUP_POOL_GRAD_RELU);
    add_member(p, group, m);
    add_member(p, group, r);
    p->s->groups[group].root = r;
  }
}

/* apply_sgd(var, matmul(a, b)) with no other reader of the product: one
 * GEMM adds -lr * a b to var, so the gradient is neither stored nor read
 * back. The product then runs among the side effects, so a and b must not
 * be variables (nor views of them), which updates and assignments change:
 * the gradient of U in matmul(U, V) reads V, the same step's V before its
 * update. */
static bool reads_variable(const fl_graph *g, const fl_node *n) {
  for (int k = 0; k < n->ninputs; k++)
    if (g->nodes[fl_storage_of(g, n->inputs[k])].op == FL_OP_VARIABLE) return true;
  return false;
}

static void fuse_gemm_sgd(planner *p) {
  const fl_graph *g = p->g;
  for (int u = 0; u < g->nnodes; u++) {
    const fl_node *sgd = &g->nodes[u];
    if (!free_in_run(p, u) || sgd->op != FL_OP_APPLY_SGD) continue;
    const int m = sgd->inputs[1];
    const fl_node *gemm = &g->nodes[m];
    if (!free_in_run(p, m) || gemm->op != FL_OP_MATMUL || gemm->dtype != FL_F32 || sole_reader(p, m) != u ||
        reads_variable(g, gemm))
      continue;
    int group = new_group(p, FL_GROUP_GEMM_SGD);
    add_member(p, group, m);
    add_member(p, group, u);
    p->s->groups[group].root = u;
  }
}

/* Grows an elementwise tree under `root` (members appended after it). */
static void absorb_producers(planner *p, int group, int node, const fl_shape *shape) {
  const fl_graph *g = p->g;
  const fl_node *n = &g->nodes[node];
  for (int i = 0; i < n->ninputs; i++) {
    int in = n->inputs[i];
    const fl_node *pn = &g->nodes[in];
    if (!free_in_run(p, in) || !fl_op_is_elementwise(pn->op) || sole_reader(p, in) != node ||
        !fl_shape_eq(&pn->shape, shape))
      continue;
    add_member(p, group, in);
    absorb_producers(p, group, in, shape);
  }
}

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

static void fuse_elementwise(planner *p) {
  const fl_graph *g = p->g;
  for (int r = g->nnodes - 1; r >= 0; r--) {
    if (!free_in_run(p, r) || !fl_op_is_elementwise(g->nodes[r].op)) continue;
    int group = new_group(p, FL_GROUP_ELEMENTWISE);
    add_member(p, group, r);
    absorb_producers(p, group, r, &g->nodes[r].shape);
    fl_group *grp = &p->s->groups[group];
    if (grp->nnodes == 1) grp->kind = FL_GROUP_SINGLE;
    /* members in node order: the root, the largest id, comes last */
    qsort(grp->nodes, (size_t)grp->nnodes, sizeof(int), cmp_int);
    grp->root = r;
  }
}

/* Orders the groups so that each runs after the groups it reads; pure
 * groups first. */
static void order_groups(planner *p) {
  const fl_graph *g = p->g;
  fl_schedule *s = p->s;
  int n = s->ngroups;
  bool *done = xcalloc((size_t)n, sizeof(bool));
  int *order = xcalloc((size_t)n, sizeof(int));
  int *key = xcalloc((size_t)n, sizeof(int));
  bool *side = xcalloc((size_t)n, sizeof(bool));
  for (int i = 0; i < n; i++) {
    key[i] = fl_group_side_effect_node(g, &s->groups[i]);
    side[i] = key[i] >= 0;
    if (side[i]) continue;
    key[i] = s->groups[i].nodes[0];
    for (int j = 0; j < s->groups[i].nnodes; j++)
      if (s->groups[i].nodes[j] < key[i]) key[i] = s->groups[i].nodes[j];
  }
  for (int placed = 0; placed < n; placed++) {
    int best = -1;
    for (int i = 0; i < n; i++) {
      if (done[i]) continue;
      bool ready = true;
      for (int j = 0; j < s->groups[i].nnodes && ready; j++) {
        const fl_node *m = &g->nodes[s->groups[i].nodes[j]];
        for (int k = 0; k < m->ninputs && ready; k++) {
          int src = fl_storage_of(g, m->inputs[k]);
          int dep = s->group_of[src];
          if (dep >= 0 && dep != i && !done[dep]) ready = false;
        }
      }
      if (!ready) continue;
      /* pure before side effects, then program order */
      if (best < 0 || (side[best] && !side[i]) || (side[best] == side[i] && key[i] < key[best])) best = i;
    }
    if (best < 0) abort(); /* the fusions above never make a cycle */
    done[best] = true;
    order[placed] = best;
  }
  fl_group *sorted = xcalloc((size_t)n, sizeof(fl_group));
  for (int i = 0; i < n; i++) sorted[i] = s->groups[order[i]];
  free(s->groups);
  s->groups = sorted;
  s->npure = n;
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < sorted[i].nnodes; j++) s->group_of[sorted[i].nodes[j]] = i;
    if (side[order[i]] && s->npure == n) s->npure = i;
  }
  free(done);
  free(order);
  free(key);
  free(side);
}

static void plan_lifetimes(planner *p, const int *fetches, int nfetches) {
  const fl_graph *g = p->g;
  fl_schedule *s = p->s;
  for (int gi = 0; gi < s->ngroups; gi++) {
    const fl_group *grp = &s->groups[gi];
    for (int j = 0; j < grp->nnodes; j++) {
      int m = grp->nodes[j];
      bool stored = grp->root < 0 || grp->root == m;
      if (stored && !is_update(g->nodes[m].op)) {
        s->materialized[m] = true;
        s->first[m] = s->last[m] = gi;
      }
    }
  }
  for (int gi = 0; gi < s->ngroups; gi++) {
    const fl_group *grp = &s->groups[gi];
    for (int j = 0; j < grp->nnodes; j++) {
      const fl_node *m = &g->nodes[grp->nodes[j]];
      for (int k = 0; k < m->ninputs; k++) {
        int src = fl_storage_of(g, m->inputs[k]);
        if (s->materialized[src] && s->last[src] < gi) s->last[src] = gi;
      }
    }
  }
  /* Fetches are copied out after the pure groups; assignments run last. */
  for (int i = 0; i < nfetches; i++) {
    int src = fl_storage_of(g, fetches[i]);
    if (s->materialized[src] && s->last[src] < s->npure) s->last[src] = s->npure;
  }
  for (int i = 0; i < g->nnodes; i++)
    if (p->needed[i] && !(p->fed && p->fed[i]) && g->nodes[i].op == FL_OP_ASSIGN) {
      int src = fl_storage_of(g, i);
      if (s->materialized[src]) s->last[src] = s->ngroups;
    }
}

fl_schedule *fl_schedule_run(const fl_graph *g, const bool *needed, const bool *fed,
                             const int *fetches, int nfetches, bool fuse) {
  int count = g->nnodes;
  fl_schedule *s = xcalloc(1, sizeof *s);
  s->group_of = xcalloc((size_t)count, sizeof(int));
  s->materialized = xcalloc((size_t)count, sizeof(bool));
  s->first = xcalloc((size_t)count, sizeof(int));
  s->last = xcalloc((size_t)count, sizeof(int));
  planner p = {.g = g, .needed = needed, .fed = fed, .s = s};
  p.in_run = xcalloc((size_t)count, sizeof(bool));
  p.uses = xcalloc((size_t)count, sizeof(int));
  p.reader = xcalloc((size_t)count, sizeof(int));
  p.fetched = xcalloc((size_t)count, sizeof(bool));
  for (int i = 0; i < count; i++) {
    s->group_of[i] = -1;
    p.in_run[i] = needed[i] && !(fed && fed[i]) && computed(g->nodes[i].op);
  }
  for (int i = 0; i < nfetches; i++) p.fetched[fetches[i]] = true;
  for (int i = 0; i < count; i++) {
    if (!needed[i] || (fed && fed[i])) continue;
    const fl_node *n = &g->nodes[i];
    for (int k = 0; k < n->ninputs; k++) {
      p.uses[n->inputs[k]]++;
      p.reader[n->inputs[k]] = i;
      /* an alias's readers read its input's storage: no fusing through it */
      if (!computed(n->op)) p.fetched[n->inputs[k]] = true;
    }
  }
  if (fuse) {
    fuse_epilogues(&p);
    fuse_softmax_xent(&p);
    fuse_pool_grad_relu(&p);
    fuse_elementwise(&p);
    fuse_gemm_sgd(&p);
    /* Optimizer updates fuse into one kernel while no assignment comes
     * between them: side effects keep their node order. */
    int updates = -1;
    for (int i = 0; i < count; i++) {
      if (!needed[i] || (fed && fed[i])) continue;
      if (g->nodes[i].op == FL_OP_ASSIGN) updates = -1;
      if (!free_in_run(&p, i) || !is_update(g->nodes[i].op)) continue;
      if (updates < 0) updates = new_group(&p, FL_GROUP_UPDATES);
      add_member(&p, updates, i);
    }
  }
  for (int i = 0; i < count; i++)
    if (free_in_run(&p, i)) {
      int group = new_group(&p, FL_GROUP_SINGLE);
      add_member(&p, group, i);
      s->groups[group].root = i;
    }
  order_groups(&p);
  plan_lifetimes(&p, fetches, nfetches);
  free(p.in_run);
  free(p.uses);
  free(p.reader);
  free(p.fetched);
  return s;
}

int fl_group_side_effect_node(const fl_graph *g, const fl_group *grp) {
  for (int j = 0; j < grp->nnodes; j++)
    if (fl_op_has_side_effect(g->nodes[grp->nodes[j]].op)) return grp->nodes[j];
  return -1;
}

const char *fl_group_kind_name(fl_group_kind kind) {
  static const char *const names[] = {"single", "elementwise", "epilogue", "softmax_xent", "updates",
                                      "pool_grad_relu", "gemm_sgd"};
  return (unsigned)kind < sizeof names / sizeof names[0] ? names[kind] : "?";
}

void fl_schedule_free(fl_schedule *s) {
  if (!s) return;
  for (int i = 0; i < s->ngroups; i++) free(s->groups[i].nodes);
  free(s->groups);
  free(s->group_of);
  free(s->materialized);
  free(s->first);
  free(s->last);
  free(s);
}

void fl_dump_schedule(const fl_graph *g, const fl_schedule *s, FILE *out) {

  for (int i = 0; i < s->ngroups; i++) {
    const fl_group *grp = &s->groups[i];
    fprintf(out, "  group %d (%s):", i, fl_group_kind_name(grp->kind));
    for (int j = 0; j < grp->nnodes; j++) {
      const fl_node *n = &g->nodes[grp->nodes[j]];
      fprintf(out, "%s %%%d %s", j ? "," : "", n->id, fl_op_name(n->op));
      if (n->name) fprintf(out, " (%s)", n->name);
    }
    if (grp->root >= 0 && !fl_op_has_side_effect(g->nodes[grp->root].op)) fprintf(out, " -> %%%d", grp->root);
    fputc('\n', out);
  }
}
