/* util.c - the front end's arena allocator and the edit distance behind "did you mean". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "front_internal.h"

struct fe_arena_chunk {
  fe_arena_chunk *next;
  size_t used, cap;
  max_align_t data[]; /* the chunk's bytes, aligned for any type */
};

enum { ARENA_CHUNK_BYTES = 64 * 1024 };

static void *fe_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fputs("flowc: out of memory\n", stderr);
    exit(1);
  }
  return p;
}

void *fe_arena_alloc(fe_arena *a, size_t size) {
  const size_t align = sizeof(max_align_t);
  size = (size + align - 1) / align * align;
  fe_arena_chunk *c = a->chunks;
  if (!c || c->cap - c->used < size) {
    size_t cap = size > ARENA_CHUNK_BYTES ? size : ARENA_CHUNK_BYTES;
    c = fe_xmalloc(sizeof *c + cap);
    c->used = 0;
    c->cap = cap;
    c->next = a->chunks;
    a->chunks = c;
  }
  void *p = (char *)c->data + c->used;
  c->used += size;
  memset(p, 0, size);
  return p;
}

char *fe_arena_strndup(fe_arena *a, const char *s, size_t n) {
  char *d = fe_arena_alloc(a, n + 1);
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

void *fe_arena_push(fe_arena *a, void *items_ptr, int *n, int *cap, size_t elem_size) {
  void **items = items_ptr;
  if (*n == *cap) {
    int new_cap = *cap ? 2 * *cap : 4;
    void *grown = fe_arena_alloc(a, (size_t)new_cap * elem_size);
    if (*n) memcpy(grown, *items, (size_t)*n * elem_size);
    *items = grown; /* the old block stays in the arena until the compile ends */
    *cap = new_cap;
  }
  return (char *)*items + (size_t)(*n)++ * elem_size;
}

void fe_arena_free(fe_arena *a) {
  fe_arena_chunk *c = a->chunks;
  while (c) {
    fe_arena_chunk *next = c->next;
    free(c);
    c = next;
  }
  a->chunks = NULL;
}

int fe_edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 64 || lb > 64) return 1000; /* names this long are never typos of each other */
  int d[65][65];
  for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
  for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
  for (size_t i = 1; i <= la; i++)
    for (size_t j = 1; j <= lb; j++) {
      int cost = a[i - 1] != b[j - 1];
      int best = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
      if (d[i - 1][j - 1] + cost < best) best = d[i - 1][j - 1] + cost;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
          d[i - 2][j - 2] + 1 < best)
        best = d[i - 2][j - 2] + 1;
      d[i][j] = best;
    }
  return d[la][lb];
}
