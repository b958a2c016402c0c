/*
 * Kernel interfaces newer than the installed headers (Linux 6.1 uapi):
 * PAGEMAP_SCAN (6.7, include/uapi/linux/fs.h) and the userfaultfd features
 * asynchronous write-protect needs (6.4/6.7, include/uapi/linux/userfaultfd.h).
 * Values copied from the kernel's uapi; every block is guarded so that newer
 * installed headers win. Include after <linux/fs.h> and <linux/userfaultfd.h>.
 */
#ifndef MAYFLYD_KERNEL_UAPI_H
#define MAYFLYD_KERNEL_UAPI_H

#include <linux/fs.h>
#include <linux/ioctl.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>

/* ---- include/uapi/linux/fs.h (6.7) ---- */

#ifndef PAGEMAP_SCAN
/* Categories: masks in pm_scan_arg, reported in page_region.categories. */
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

/* [start, end) with the categories all its pages share. */
struct page_region {
    __u64 start;
    __u64 end;
    __u64 categories;
};

/* Flags of pm_scan_arg. */
#define PM_SCAN_WP_MATCHING (1 << 0)    /* write-protect the pages matched */
#define PM_SCAN_CHECK_WPASYNC (1 << 1)  /* EPERM on a page without async WP */

struct pm_scan_arg {
    __u64 size;              /* sizeof(struct pm_scan_arg) */
    __u64 flags;
    __u64 start;             /* page-aligned */
    __u64 end;
    __u64 walk_end;          /* out: where the walk stopped (== end: done) */
    __u64 vec;               /* struct page_region[vec_len] */
    __u64 vec_len;
    __u64 max_pages;         /* 0: no limit */
    __u64 category_inverted; /* categories that match when 0 */
    __u64 category_mask;     /* all of these must match */
    __u64 category_anyof_mask;
    __u64 return_mask;       /* categories reported in page_region */
};

#define PAGEMAP_IOCTL_MAGIC 'f'
#define PAGEMAP_SCAN _IOWR(PAGEMAP_IOCTL_MAGIC, 16, struct pm_scan_arg)
#endif /* PAGEMAP_SCAN */

/* 6.14; defined alone because it came after PAGEMAP_SCAN itself. */
#ifndef PAGE_IS_GUARD
#define PAGE_IS_GUARD (1 << 8)
#endif

/* ---- include/uapi/linux/userfaultfd.h ---- */

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
/* With write-protect registration, UFFDIO_WRITEPROTECT also marks pages
 * that are not populated yet (6.4). */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
/* A write to a write-protected page clears the protection in the fault
 * handler instead of queuing an event; PAGEMAP_SCAN reads the result (6.7). */
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
/* In 6.1 already; here for older headers. */
#ifndef UFFDIO_WRITEPROTECT_MODE_WP
#define UFFDIO_WRITEPROTECT_MODE_WP ((__u64)1 << 0)
#endif

#endif /* MAYFLYD_KERNEL_UAPI_H */
