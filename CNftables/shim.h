#ifndef SVCNAT_CNFTABLES_SHIM_H
#define SVCNAT_CNFTABLES_SHIM_H
/* Everything svcnat needs from libnftnl, libmnl and the kernel's nf_tables UAPI headers.
 * Constants (NFT_MSG_*, NFTA_*, NFT_REG_*) come from these headers; Swift never retypes them. */
#include <sys/socket.h>
/* glibc first, so linux/libc-compat.h leaves in.h/in6.h definitions to glibc. */
#include <netinet/in.h>
#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/filter.h>
#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <libnftnl/batch.h>
#include <libnftnl/table.h>
#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/expr.h>
#include <libnftnl/set.h>
#include <libnftnl/gen.h>
#include <libnftnl/udata.h>
#include <libnftnl/object.h>
#include <libnftnl/flowtable.h>
#endif
