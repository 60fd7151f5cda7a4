/* eval.c - placeholder until written. */
#include "ir.h"
