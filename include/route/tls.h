/* tls.h: TLS with mbedTLS over libuv streams, as a pure byte transformer: ciphertext from the
 * socket goes in with tls_feed, plaintext comes out of tls_read; plaintext goes in with
 * tls_write and ciphertext waits in tls_pending_out for the caller to write. No socket I/O
 * happens here, so nothing here can block. stream.c is the one caller on the proxy's path
 * (both the listener's and the upstreams' connections). */
#ifndef ROUTE_TLS_H
#define ROUTE_TLS_H

#include <stddef.h>
#include <sys/types.h>

#include "route/util.h"

typedef struct tls_config tls_config_t; /* one per loop and role: DRBG, CA chain or own cert */
typedef struct tls_conn tls_conn_t;     /* one per connection */
typedef struct tls_resume tls_resume_t; /* a saved client session, one per upstream origin */

/* Client side: verification on, against ca_file (NULL: the system bundle). */
tls_config_t *tls_client_config_new(const char *ca_file, char **err);
/* Server side: the listener's certificate chain and key. */
tls_config_t *tls_server_config_new(const char *cert_file, const char *key_file, char **err);
void tls_config_free(tls_config_t *cfg);

/* hostname: SNI and the name the certificate must carry (client only; NULL for servers).
 * resume: where a client keeps its session for the next connection to the same origin. */
tls_conn_t *tls_conn_new(tls_config_t *cfg, const char *hostname, tls_resume_t **resume);
void tls_conn_free(tls_conn_t *t);

/* Ciphertext that arrived from the peer. */
int tls_feed(tls_conn_t *t, const char *data, size_t len);
/* Drives the handshake: 1 done, 0 needs more bytes (write tls_pending_out first), -1 failed
 * with a message in err ("certificate verify failed: ..."). */
int tls_handshake(tls_conn_t *t, char *err, size_t err_cap);
/* Decrypted bytes: > 0 bytes, 0 needs more input, -1 the peer closed (close_notify or EOF
 * inside a record), -2 error (message in err). */
ssize_t tls_read(tls_conn_t *t, char *out, size_t cap, char *err, size_t err_cap);
/* Encrypts all of data into the pending output. 0 or -1. */
int tls_write(tls_conn_t *t, const char *data, size_t len);
/* Ciphertext waiting to be written to the socket; the caller takes it (and then owns it). */
buf_t *tls_pending_out(tls_conn_t *t);
void tls_resume_free(tls_resume_t *r);

#endif
