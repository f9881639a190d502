/* body_edit.h: edits of a JSON request body on its way upstream that leave every other byte
 * as it came (an SDK's formatting, key order, number spellings, unknown members). An edit is
 * one replacement: body[at, at + cut) becomes insert. */
#ifndef ROUTE_BODY_EDIT_H
#define ROUTE_BODY_EDIT_H

#include <stddef.h>

typedef struct body_edit {
    size_t at, cut;
    const char *insert; /* static text */
    size_t insert_len;
} body_edit_t;

/* Makes the body ask for the usage chunk of a stream: `"stream_options": {"include_usage":
 * true}` added to the top-level object, or "include_usage": true added to its stream_options
 * object, or an include_usage false (or null) there set to true; a null stream_options
 * becomes that object. Returns 1 with *e set; 0 when there is nothing to do (include_usage is
 * true already) or nothing it should touch (a stream_options or include_usage of another
 * type: the upstream judges those); -1 when the body is not one valid JSON object. */
int body_edit_include_usage(const char *body, size_t len, body_edit_t *e);

/* Removes the top-level member `key` of a JSON object when its value is null (the last one,
 * when repeated), with its comma. 1 with *e set; 0 when there is none; -1 when json is not
 * one valid JSON object. */
int body_edit_remove_null_member(const char *json, size_t len, const char *key, body_edit_t *e);

/* The length of the edited body. */
size_t body_edit_len(size_t len, const body_edit_t *e);
/* Writes the edited body (body_edit_len bytes) to out. */
void body_edit_apply(const char *body, size_t len, const body_edit_t *e, char *out);

#endif
