/* nbdsnap tool: reading the filters' command results (docs/interface.md)
 * with json-c.
 *
 * A result is one JSON object with a boolean "ok"; anything else (not
 * JSON, not UTF-8, text after the object, "ok" missing or not a boolean)
 * is refused as a whole, with a message saying what is wrong, before any
 * of it is used.  The accessors below then look members up by type: a
 * member of another type counts as missing.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "nbdsnap.h"

/* Parse and check text; on success res takes it. */
int
result_parse (char *text, size_t len, struct result *res,
              char *err, size_t errlen)
{
  struct json_tokener *tok;
  struct json_object *root, *ok;
  enum json_tokener_error e;
  size_t end;

  if (len > INT32_MAX - 1) {
    snprintf (err, errlen, "too large");
    return -1;
  }
  tok = json_tokener_new ();
  if (tok == NULL) {
    snprintf (err, errlen, "out of memory");
    return -1;
  }
  /* Strict JSON in valid UTF-8; the length includes the final NUL, so
   * that the tokener knows the text ends there.
   */
  json_tokener_set_flags (tok, JSON_TOKENER_STRICT |
                          JSON_TOKENER_VALIDATE_UTF8);
  root = json_tokener_parse_ex (tok, text, (int) len + 1);
  e = json_tokener_get_error (tok);
  end = json_tokener_get_parse_end (tok);
  json_tokener_free (tok);
  if (root == NULL || e != json_tokener_success) {
    snprintf (err, errlen, "not JSON (%s at byte %zu)",
              json_tokener_error_desc (e), end);
    json_object_put (root);
    return -1;
  }
  if (end < len) {              /* a NUL byte ended the text early */
    snprintf (err, errlen, "not JSON (a NUL byte at byte %zu)", end);
    json_object_put (root);
    return -1;
  }
  if (!json_object_is_type (root, json_type_object)) {
    snprintf (err, errlen, "not a JSON object");
    json_object_put (root);
    return -1;
  }
  if (!json_object_object_get_ex (root, "ok", &ok) ||
      !json_object_is_type (ok, json_type_boolean)) {
    snprintf (err, errlen, "its \"ok\" is not true or false");
    json_object_put (root);
    return -1;
  }
  res->text = text;
  res->root = root;
  res->ok = json_object_get_boolean (ok);
  return 0;
}

/* Free the text and the parse. */
void
result_free (struct result *res)
{
  json_object_put (res->root);
  free (res->text);
  res->root = NULL;
  res->text = NULL;
}

/* "ERROR (ERRNO)" of a refusal. */
void
result_error (struct json_object *o, char *buf, size_t len)
{
  const char *e = jstr (o, "error"), *en = jstr (o, "errno");

  if (e == NULL || e[0] == '\0')
    e = "(no error message)";
  if (en && en[0])
    snprintf (buf, len, "%s (%s)", e, en);
  else
    snprintf (buf, len, "%s", e);
}

/* o[key], NULL if there is none. */
struct json_object *
jget (struct json_object *o, const char *key)
{
  struct json_object *v;

  if (o == NULL || !json_object_is_type (o, json_type_object) ||
      !json_object_object_get_ex (o, key, &v))
    return NULL;
  return v;                     /* NULL for a JSON null */
}

/* o[key] if it is a string without NUL bytes. */
const char *
jstr (struct json_object *o, const char *key)
{
  struct json_object *v = jget (o, key);
  const char *s;

  if (v == NULL || !json_object_is_type (v, json_type_string))
    return NULL;
  s = json_object_get_string (v);
  if (strlen (s) != (size_t) json_object_get_string_len (v))
    return NULL;
  return s;
}

/* o[key] if it is true or false. */
bool
jbool (struct json_object *o, const char *key, bool *b)
{
  struct json_object *v = jget (o, key);

  if (v == NULL || !json_object_is_type (v, json_type_boolean))
    return false;
  *b = json_object_get_boolean (v);
  return true;
}

/* o[key] if it is an integer >= 0. */
bool
jnum (struct json_object *o, const char *key, uint64_t *n)
{
  struct json_object *v = jget (o, key);

  if (v == NULL || !json_object_is_type (v, json_type_int) ||
      json_object_get_int64 (v) < 0)
    return false;
  *n = json_object_get_uint64 (v);
  return true;
}

/* The length of array o[key]. */
size_t
jlen (struct json_object *o, const char *key)
{
  struct json_object *v = jget (o, key);

  if (v == NULL || !json_object_is_type (v, json_type_array))
    return 0;
  return json_object_array_length (v);
}

/* Element i of array o[key]. */
struct json_object *
jat (struct json_object *o, const char *key, size_t i)
{
  struct json_object *v = jget (o, key);

  if (v == NULL || !json_object_is_type (v, json_type_array) ||
      i >= json_object_array_length (v))
    return NULL;
  return json_object_array_get_idx (v, i);
}
