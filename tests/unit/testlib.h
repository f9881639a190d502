/* testlib.h: the unit tests' only harness. CHECK counts and reports each condition and goes
 * on (one run shows every failure); TEST_DONE prints the tally and is main's return value. */
#ifndef ROUTE_TESTLIB_H
#define ROUTE_TESTLIB_H

#include <stdio.h>

static int test_passed, test_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            test_passed++;                                                                         \
        } else {                                                                                   \
            test_failed++;                                                                         \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define TEST_DONE()                                                                                \
    (printf("%d passed, %d failed\n", test_passed, test_failed), test_failed ? 1 : 0)

#endif
