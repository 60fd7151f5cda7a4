/* arena.c - one 64-byte-aligned block that holds a program's activations and scratch. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "flowc_rt.h"

#include <stdint.h>
#include <stdlib.h>

/* A cache line, and the widest vector (AVX-512) the generated loops use. */
#define ARENA_ALIGN 64

int flrt_arena_reserve(flrt_arena *a, size_t bytes) {
  if (bytes <= a->cap) return 0;
  if (bytes > SIZE_MAX - (ARENA_ALIGN - 1)) return -1;
  size_t rounded = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
  /* Contents need not survive, so free first: the peak stays at the new size. */
  free(a->base);
  a->base = NULL;
  a->cap = 0;
  /* posix_memalign, not C11's aligned_alloc: the runtime must build as C99. */
  void *p = NULL;
  if (posix_memalign(&p, ARENA_ALIGN, rounded) != 0) return -1;
  a->base = p;
  a->cap = rounded;
  return 0;
}

void flrt_arena_free(flrt_arena *a) {
  free(a->base);
  a->base = NULL;
  a->cap = 0;
}

typedef struct {
  size_t size;
  int index;
} plan_item;

static int plan_by_size(const void *a, const void *b) {
  const plan_item *x = a, *y = b;
  if (x->size != y->size) return x->size < y->size ? 1 : -1;
  return x->index - y->index;
}

static int plan_by_offset(const void *a, const void *b) {
  size_t x = ((const plan_item *)a)->size, y = ((const plan_item *)b)->size;
  return (x > y) - (x < y);
}

/* Greedy placement, largest first, each at the lowest offset where it does not
 * meet a buffer that is alive at the same time: the classic heuristic for
 * this (NP-hard) packing, within a few percent of the live-size bound on
 * training graphs. */
size_t flrt_plan_arena(const size_t *sizes, const int *first, const int *last, int n, size_t *offsets) {
  plan_item *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
  plan_item *busy = malloc((size_t)(n > 0 ? n : 1) * sizeof *busy); /* size field holds the offset */
  bool *placed = calloc((size_t)(n > 0 ? n : 1), sizeof *placed);
  size_t total = 0;
  if (!order || !busy || !placed) {
    /* No memory to plan with: lay the buffers end to end, which is always valid. */
    for (int i = 0; i < n; i++) {
      offsets[i] = total;
      total += (sizes[i] + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    }
    free(order);
    free(busy);
    free(placed);
    return total;
  }
  for (int i = 0; i < n; i++) order[i] = (plan_item){sizes[i], i};
  qsort(order, (size_t)n, sizeof *order, plan_by_size);
  for (int k = 0; k < n; k++) {
    int b = order[k].index;
    size_t need = (sizes[b] + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    int nbusy = 0;
    for (int j = 0; j < n; j++)
      if (placed[j] && first[j] <= last[b] && first[b] <= last[j]) busy[nbusy++] = (plan_item){offsets[j], j};
    qsort(busy, (size_t)nbusy, sizeof *busy, plan_by_offset);
    size_t at = 0;
    for (int j = 0; j < nbusy; j++) {
      size_t start = busy[j].size;
      size_t end = start + (sizes[busy[j].index] + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
      if (at + need <= start) break;
      if (end > at) at = end;
    }
    offsets[b] = at;
    placed[b] = true;
    if (at + need > total) total = at + need;
  }
  free(order);
  free(busy);
  free(placed);
  return total;
}
