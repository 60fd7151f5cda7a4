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
