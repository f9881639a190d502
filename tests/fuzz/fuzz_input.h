/* fuzz_input.h: the fuzzers' shared input step. The parsers under test take NUL-terminated
 * text, and libFuzzer's bytes are not terminated. */
#ifndef ROUTE_FUZZ_INPUT_H
#define ROUTE_FUZZ_INPUT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A malloc'd copy of data with a NUL after it (the caller frees it); aborts when out of
 * memory, which libFuzzer reports instead of a silent skip. */
static inline char *fuzz_text(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = '\0';
    return text;
}

#endif
