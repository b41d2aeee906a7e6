#ifndef R8_NEAR_MISS_H
#define R8_NEAR_MISS_H
/* R8 near miss: include guard, one conditional level, simple macros. */
#define MAX_ITEMS 16
#define SQUARE(x) ((x) * (x))
#define STR(x) #x

#ifdef DEBUG
#define TRACE 1
#else
#define TRACE 0
#endif

#endif
