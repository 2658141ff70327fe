import CNftables
import Glibc

extension NFTables {
    /// The ruleset generation id: the kernel bumps it on every committed transaction, by anyone.
    /// The corresponding libnftnl calls are `nftnl_gen_nlmsg_parse` and `nftnl_gen_get_u32`.
    public func generation() throws -> UInt32 {
        var id: UInt32?
        try request(NFT_MSG_GETGEN, family: KernelNumbers.family(.ip), flags: NLM_F_ACK, what: "get the ruleset generation") { _ in
        } each: { nlh in
            guard let g = nftnl_gen_alloc() else { return }
            defer { nftnl_gen_free(g) }
            if nftnl_gen_nlmsg_parse(nlh, g) >= 0 { id = nftnl_gen_get_u32(g, UInt16(NFTNL_GEN_ID)) }
        }
        guard let id else { throw NetlinkError("get the ruleset generation: no answer", errno: EPROTO) }
        return id
    }
}
