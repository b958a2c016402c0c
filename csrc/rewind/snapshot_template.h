/*
 * The pristine pages of a reset worker, kept by a template process instead
 * of a copy (docs/reset-engine.md, "How it works"; issue 16).
 *
 * At the snapshot the worker clones a child, the template, that shares
 * every page with it copy-on-write and never writes tracked memory again:
 * its memory is the snapshot, at no cost but the pages the worker has since
 * written (which the kernel then copies for the worker, not for it). The
 * template runs on its copy of the rewinder's stack with every signal
 * blocked, makes raw system calls only (no errno, no libc state: its
 * tracked pages must stay as they were) and serves page copies:
 *
 * - a page store: a memfd of one slot per tracked page, mapped writable and
 *   shared in the template only, then sealed (F_SEAL_FUTURE_WRITE, SHRINK,
 *   GROW, SEAL) so that the worker's read-only mapping of it cannot be made
 *   writable, and nothing can write it but the template. Slots are handed
 *   out in order and never rewritten; a slot holds the template's copy of
 *   one page.
 * - an index in the worker's untracked memory: page -> 1 + slot, 0 when the
 *   page has never been asked for.
 * - a SOCK_SEQPACKET socketpair: the rewind asks for the pages it needs
 *   that have no slot yet, once per scan batch (after the first few
 *   requests almost never); the template copies them into new slots and
 *   answers with the first one.
 *
 * Each message carries a secret (in untracked memory of both, from
 * getrandom) and a sequence number. The template exits on any other
 * message, and the worker fails (and is replaced) on any unexpected answer,
 * on EOF, or after 1 s without one. Whatever a message says, the template
 * only ever copies its own pristine page into a fresh slot: no message can
 * make the store hold wrong content for a page. The template dies with the
 * worker (PR_SET_PDEATHSIG, and EOF on its socket), keeps no fd but its
 * socket, and stays not dumpable. Orphaned, it is reaped by the pid
 * namespace's init, the host, which reaps unknown children silently.
 */
#ifndef MAYFLYD_SNAPSHOT_TEMPLATE_H
#define MAYFLYD_SNAPSHOT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "rewind/dirty_pages.h"

/* Pages asked of the template in one message. */
#define MF_TEMPLATE_BATCH 512
/* How long the worker waits for the template's answer. */
#define MF_TEMPLATE_TIMEOUT_MS 1000

struct mf_template {
    int sock;               /* the worker's end; -1: none */
    pid_t pid;              /* the template, for the record */
    dev_t sock_dev;         /* the socket's identity: a request may dup2 over it */
    ino_t sock_ino;
    const uint8_t *store;   /* read-only, shared with the template */
    size_t store_len;
    uint32_t *slots;        /* per tracked page: 1 + its slot in the store, 0: none yet */
    size_t npages;
    size_t first[MF_DIRTY_MAX_RANGES]; /* slots[] index of tracked range i's first page */
    uint64_t secret;
    uint64_t seq;           /* of the last question */
    size_t fetched;         /* pages copied into the store so far */
    uint64_t ask[MF_TEMPLATE_BATCH];
};

/* The address just past the template's clone instruction: the one clone
 * a worker's no-new-tasks filter lets through (host_seal.h). */
uint64_t mf_template_clone_site(void);

/* Bytes of index mf_template_start needs for the tracked ranges of t. */
size_t mf_template_index_size(size_t tracked_bytes);

/* Clones the template: call when the tracked memory is the snapshot (all
 * of it protected and marked clean). index: index_len bytes (at least
 * mf_template_index_size) of zeroed untracked memory. Leaves the worker
 * with the socket and the read-only store mapping, which the caller's
 * mappings and fds record. */
bool mf_template_start(struct mf_template *tpl, const struct mf_dirty_tracker *t, uint32_t *index,
                       size_t index_len);

/* Asks the template for the pages of these written regions that have no
 * slot yet. */
bool mf_template_fetch(struct mf_template *tpl, const struct mf_dirty_tracker *t,
                       const struct mf_dirty_region *regions, size_t n);

/* The store's copy of the page at addr in tracked range i; NULL: none yet. */
const uint8_t *mf_template_page(const struct mf_template *tpl, const struct mf_dirty_tracker *t, size_t i,
                                uint64_t addr);

/* Copies [addr, addr+len) of tracked range i back from the store; every
 * page must have been fetched. */
bool mf_template_copy(const struct mf_template *tpl, const struct mf_dirty_tracker *t, size_t i, uint64_t addr,
                      size_t len);

#endif /* MAYFLYD_SNAPSHOT_TEMPLATE_H */
