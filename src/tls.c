/* tls.c: mbedTLS contexts for upstream connections and the optional HTTPS listener.
 *
 * Owns: the per-loop configuration (entropy, DRBG, CA chain or own certificate: set up once,
 * never per connection), per-connection SSL contexts driven through memory BIOs, client
 * session resumption, and readable verification errors.
 * Must not: touch sockets or the event loop (callers move the bytes), or ever accept a
 * certificate that failed verification. */
#include "route/tls.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
/* Ciphertext input buffer capacity a connection may keep once everything in it is consumed;
 * a bigger one (a 64 KiB read of a large body) is freed, so idle connections stay small. */
#define TLS_IN_KEEP (16 * 1024)

struct tls_config {
    int is_server;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt certs; /* CA chain (client) or own chain (server) */
    mbedtls_pk_context key;
    mbedtls_ssl_config conf;
};

struct tls_resume {
    mbedtls_ssl_session session;
};

struct tls_conn {
    tls_config_t *cfg;
    mbedtls_ssl_context ssl;
    buf_t in;
    size_t in_off;
    buf_t out;
    tls_resume_t **resume;
    int handshake_done;
};

static char *error_text(const char *what, int rc) {
    char detail[160];
    mbedtls_strerror(rc, detail, sizeof(detail));
    size_t n = strlen(what) + strlen(detail) + 4;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s: %s", what, detail);
    return s;
}

static int config_init(tls_config_t *cfg, int endpoint, char **err) {
    mbedtls_entropy_init(&cfg->entropy);
    mbedtls_ctr_drbg_init(&cfg->drbg);
    mbedtls_x509_crt_init(&cfg->certs);
    mbedtls_pk_init(&cfg->key);
    mbedtls_ssl_config_init(&cfg->conf);
    static const char pers[] = "openai-api-route";
    int rc = mbedtls_ctr_drbg_seed(&cfg->drbg, mbedtls_entropy_func, &cfg->entropy,
                                   (const unsigned char *)pers, sizeof(pers) - 1);
    if (rc == 0)
        rc = mbedtls_ssl_config_defaults(&cfg->conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                         MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0) {
        *err = error_text("TLS set-up", rc);
        return -1;
    }
    mbedtls_ssl_conf_rng(&cfg->conf, mbedtls_ctr_drbg_random, &cfg->drbg);
    return 0;
}

tls_config_t *tls_client_config_new(const char *ca_file, char **err) {
    tls_config_t *cfg = calloc(1, sizeof(*cfg));
    if (!cfg) return NULL;
    if (config_init(cfg, MBEDTLS_SSL_IS_CLIENT, err) != 0) {
        tls_config_free(cfg);
        return NULL;
    }
    const char *path = ca_file ? ca_file : SYSTEM_CA_BUNDLE;
    int rc = mbedtls_x509_crt_parse_file(&cfg->certs, path);
    /* rc > 0: some certificates of a big system bundle did not parse; the rest are usable. */
    if (rc < 0 || cfg->certs.version == 0) {
        char what[300];
        snprintf(what, sizeof(what), "cannot load CA certificates from %s", path);
        *err = error_text(what, rc < 0 ? rc : MBEDTLS_ERR_X509_INVALID_FORMAT);
        tls_config_free(cfg);
        return NULL;
    }
    mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&cfg->conf, &cfg->certs, NULL);
    mbedtls_ssl_conf_session_tickets(&cfg->conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    return cfg;
}

tls_config_t *tls_server_config_new(const char *cert_file, const char *key_file, char **err) {
    tls_config_t *cfg = calloc(1, sizeof(*cfg));
    if (!cfg) return NULL;
    cfg->is_server = 1;
    if (config_init(cfg, MBEDTLS_SSL_IS_SERVER, err) != 0) goto fail;
    char what[300];
    int rc = mbedtls_x509_crt_parse_file(&cfg->certs, cert_file);
    if (rc != 0) {
        snprintf(what, sizeof(what), "cannot load certificate %s", cert_file);
        *err = error_text(what, rc);
        goto fail;
    }
#if MBEDTLS_VERSION_MAJOR >= 3
    rc = mbedtls_pk_parse_keyfile(&cfg->key, key_file, NULL, mbedtls_ctr_drbg_random, &cfg->drbg);
#else
    rc = mbedtls_pk_parse_keyfile(&cfg->key, key_file, NULL);
#endif
    if (rc != 0) {
        snprintf(what, sizeof(what), "cannot load key %s", key_file);
        *err = error_text(what, rc);
        goto fail;
    }
    rc = mbedtls_ssl_conf_own_cert(&cfg->conf, &cfg->certs, &cfg->key);
    if (rc != 0) {
        *err = error_text("certificate and key do not fit", rc);
        goto fail;
    }
    return cfg;
fail:
    tls_config_free(cfg);
    return NULL;
}

void tls_config_free(tls_config_t *cfg) {
    if (!cfg) return;
    mbedtls_ssl_config_free(&cfg->conf);
    mbedtls_pk_free(&cfg->key);
    mbedtls_x509_crt_free(&cfg->certs);
    mbedtls_ctr_drbg_free(&cfg->drbg);
    mbedtls_entropy_free(&cfg->entropy);
    free(cfg);
}

/* ---- memory BIO: mbedTLS reads from t->in and writes to t->out ---- */

static int bio_send(void *ctx, const unsigned char *data, size_t len) {
    tls_conn_t *t = ctx;
    return buf_append(&t->out, data, len) == 0 ? (int)len : MBEDTLS_ERR_SSL_ALLOC_FAILED;
}

static int bio_recv(void *ctx, unsigned char *out, size_t cap) {
    tls_conn_t *t = ctx;
    size_t avail = t->in.len - t->in_off;
    if (avail == 0) return MBEDTLS_ERR_SSL_WANT_READ;
    size_t n = avail < cap ? avail : cap;
    memcpy(out, t->in.data + t->in_off, n);
    t->in_off += n;
    if (t->in_off == t->in.len) {
        if (t->in.cap > TLS_IN_KEEP) buf_free(&t->in);
        t->in.len = t->in_off = 0;
    }
    return (int)n;
}

tls_conn_t *tls_conn_new(tls_config_t *cfg, const char *hostname, tls_resume_t **resume) {
    tls_conn_t *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->cfg = cfg;
    t->resume = resume;
    mbedtls_ssl_init(&t->ssl);
    if (mbedtls_ssl_setup(&t->ssl, &cfg->conf) != 0 ||
        (hostname && mbedtls_ssl_set_hostname(&t->ssl, hostname) != 0)) {
        tls_conn_free(t);
        return NULL;
    }
    if (resume && *resume) mbedtls_ssl_set_session(&t->ssl, &(*resume)->session);
    mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
    return t;
}

void tls_conn_free(tls_conn_t *t) {
    if (!t) return;
    mbedtls_ssl_free(&t->ssl);
    buf_free(&t->in);
    buf_free(&t->out);
    free(t);
}

int tls_feed(tls_conn_t *t, const char *data, size_t len) {
    if (t->in_off > 0 && t->in_off == t->in.len) t->in.len = t->in_off = 0;
    return buf_append(&t->in, data, len);
}

static void save_session(tls_conn_t *t) {
    if (!t->resume) return;
    if (!*t->resume) {
        *t->resume = calloc(1, sizeof(tls_resume_t));
        if (!*t->resume) return;
        mbedtls_ssl_session_init(&(*t->resume)->session);
    } else {
        mbedtls_ssl_session_free(&(*t->resume)->session);
        mbedtls_ssl_session_init(&(*t->resume)->session);
    }
    if (mbedtls_ssl_get_session(&t->ssl, &(*t->resume)->session) != 0) {
        tls_resume_free(*t->resume);
        *t->resume = NULL;
    }
}

int tls_handshake(tls_conn_t *t, char *err, size_t err_cap) {
    if (t->handshake_done) return 1;
    int rc = mbedtls_ssl_handshake(&t->ssl);
    if (rc == 0) {
        t->handshake_done = 1;
        save_session(t);
        return 1;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return 0;
    uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
    if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED || (flags && flags != (uint32_t)-1)) {
        char info[256];
        mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
        size_t n = strlen(info);
        while (n && (info[n - 1] == '\n' || info[n - 1] == ' '))
            info[--n] = '\0';
        for (char *p = info; *p; p++)
            if (*p == '\n') *p = ';';
        snprintf(err, err_cap, "certificate verify failed: %s", info);
    } else {
        char detail[160];
        mbedtls_strerror(rc, detail, sizeof(detail));
        snprintf(err, err_cap, "TLS handshake failed: %s", detail);
    }
    /* A session that ends in failure must not be offered again. */
    if (t->resume && *t->resume) {
        tls_resume_free(*t->resume);
        *t->resume = NULL;
    }
    return -1;
}

ssize_t tls_read(tls_conn_t *t, char *out, size_t cap, char *err, size_t err_cap) {
    int rc = mbedtls_ssl_read(&t->ssl, (unsigned char *)out, cap);
    if (rc > 0) return rc;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return 0;
    if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) return -1;
#ifdef MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET
    if (rc == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET) return 0;
#endif
    char detail[160];
    mbedtls_strerror(rc, detail, sizeof(detail));
    snprintf(err, err_cap, "TLS read failed: %s", detail);
    return -2;
}

int tls_write(tls_conn_t *t, const char *data, size_t len) {
    while (len > 0) {
        int rc = mbedtls_ssl_write(&t->ssl, (const unsigned char *)data, len);
        if (rc <= 0) return -1; /* the memory BIO never asks to wait */
        data += rc;
        len -= (size_t)rc;
    }
    return 0;
}

buf_t *tls_pending_out(tls_conn_t *t) {
    return &t->out;
}

void tls_resume_free(tls_resume_t *r) {
    if (!r) return;
    mbedtls_ssl_session_free(&r->session);
    free(r);
}
