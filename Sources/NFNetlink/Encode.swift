import CNftables
import NFTModel

/// Builds one nfnetlink batch for a transaction: BATCH_BEGIN, one message per object (element
/// lists split into chunks), BATCH_END. Remembers which operation each sequence number carries
/// so a kernel error can name it.
struct BatchEncoder {
    /// The table (and its nfproto family) the next operations are for.
    var table = ""
    var family = KernelNumbers.family(.ip)
    let buffer = MessageBuffer()
    let firstSeq: UInt32
    private(set) var seq: UInt32
    /// Operation index for every sequence number from firstSeq + 1 on.
    private(set) var opForSeq: [Int32] = []
    /// For element messages, which of the operation's elements the message carries, and
    /// where the message starts in the buffer (to read the kernel's error offset against).
    private(set) var elementsForSeq: [Int: Range<Int>] = [:]
    private(set) var offsetForSeq: [Int: Int] = [:]
    private var currentOp: Int32 = -1
    /// Where the last object message starts in the buffer.
    private var lastHeaderOffset = -1

    /// Elements per NEWSETELEM message: the nested element list carries a 16-bit length.
    static let elementsPerMessage = 128
    /// This batch's: 1 makes the kernel name a refused element exactly (one error per message).
    let elementsPerMessage: Int

    /// `generation`, when given, goes in BATCH_BEGIN as NFNL_BATCH_GENID: the kernel then
    /// takes the batch only if the ruleset is still at that generation, and otherwise refuses
    /// it whole with ERESTART (a compare-and-swap, as nft does).
    init(firstSeq: UInt32, elementsPerMessage: Int = BatchEncoder.elementsPerMessage, generation: UInt32? = nil) {
        self.elementsPerMessage = max(1, elementsPerMessage)
        self.firstSeq = firstSeq
        seq = firstSeq
        let begin = nftnl_batch_begin(buffer.tail, seq)!
        if let generation { mnl_attr_put_u32(begin, UInt16(NFNL_BATCH_GENID.rawValue), generation.bigEndian) }
        buffer.commitBatchMarker()
    }

    var lastSeq: UInt32 { seq }

    /// Only the last message asks for an ack: the kernel reports every refused message anyway,
    /// and delivers all answers once the batch is done, so this ack closes the exchange without
    /// one ack per message.
    func requestAckForLastMessage() {
        guard lastHeaderOffset >= 0 else { return }
        let h = (buffer.base + lastHeaderOffset).assumingMemoryBound(to: nlmsghdr.self)
        h.pointee.nlmsg_flags |= UInt16(NLM_F_ACK)
    }

    mutating func end() {
        seq &+= 1
        opForSeq.append(-1)
        nftnl_batch_end(buffer.tail, seq)
        buffer.commitBatchMarker()
    }

    private mutating func header(_ type: nf_tables_msg_types, flags: Int32) -> UnsafeMutablePointer<nlmsghdr> {
        seq &+= 1
        opForSeq.append(currentOp)
        lastHeaderOffset = buffer.length
        return nftnl_nlmsg_build_hdr(buffer.tail, KernelNumbers.msg(type), family, UInt16(flags), seq)
    }

    mutating func encode(_ op: Operation, index: Int) {
        currentOp = Int32(index)
        switch op {
        case .addTable(let comment):
            let t = NftTable()
            nftnl_table_set_str(t.raw, KernelNumbers.attr(NFTNL_TABLE_NAME.rawValue), table)
            // Sent as nft sends it, so that on an existing table it clears a dormant flag.
            nftnl_table_set_u32(t.raw, KernelNumbers.attr(NFTNL_TABLE_FLAGS.rawValue), 0)
            if let comment {
                ElementCodec.userData(comment: comment, type: NFTNL_UDATA_TABLE_COMMENT.rawValue).withUnsafeBytes {
                    _ = nftnl_table_set_data(t.raw, KernelNumbers.attr(NFTNL_TABLE_USERDATA.rawValue), $0.baseAddress, UInt32($0.count))
                }
            }
            let h = header(NFT_MSG_NEWTABLE, flags: NLM_F_CREATE)
            nftnl_table_nlmsg_build_payload(h, t.raw)
            buffer.commit(h)
        case .deleteTable:
            let t = NftTable()
            nftnl_table_set_str(t.raw, KernelNumbers.attr(NFTNL_TABLE_NAME.rawValue), table)
            let h = header(NFT_MSG_DELTABLE, flags: 0)
            nftnl_table_nlmsg_build_payload(h, t.raw)
            buffer.commit(h)
        case .addChain(let c):
            let ch = chainObject(c.name)
            if let b = c.base {
                nftnl_chain_set_u32(ch.raw, KernelNumbers.attr(NFTNL_CHAIN_HOOKNUM.rawValue), KernelNumbers.hook(b.hook))
                nftnl_chain_set_s32(ch.raw, KernelNumbers.attr(NFTNL_CHAIN_PRIO.rawValue), b.priority)
                nftnl_chain_set_str(ch.raw, KernelNumbers.attr(NFTNL_CHAIN_TYPE.rawValue), b.type.rawValue)
                nftnl_chain_set_u32(
                    ch.raw, KernelNumbers.attr(NFTNL_CHAIN_POLICY.rawValue), UInt32(b.policy == .drop ? NF_DROP : NF_ACCEPT))
            }
            let h = header(NFT_MSG_NEWCHAIN, flags: NLM_F_CREATE)
            nftnl_chain_nlmsg_build_payload(h, ch.raw)
            buffer.commit(h)
        case .deleteChain(let name):
            let ch = chainObject(name)
            let h = header(NFT_MSG_DELCHAIN, flags: 0)
            nftnl_chain_nlmsg_build_payload(h, ch.raw)
            buffer.commit(h)
        case .flushChain(let name):
            let r = ruleObject(chain: name)
            let h = header(NFT_MSG_DELRULE, flags: 0)
            nftnl_rule_nlmsg_build_payload(h, r.raw)
            buffer.commit(h)
        case .deleteRule(let chain, let handle):
            let r = ruleObject(chain: chain)
            nftnl_rule_set_u64(r.raw, KernelNumbers.attr(NFTNL_RULE_HANDLE.rawValue), handle)
            let h = header(NFT_MSG_DELRULE, flags: 0)
            nftnl_rule_nlmsg_build_payload(h, r.raw)
            buffer.commit(h)
        case .addRule(let chain, let rule):
            let r = ruleObject(chain: chain)
            for e in rule.exprs { nftnl_rule_add_expr(r.raw, ExprCodec.make(e)) }
            if let comment = rule.comment {
                ElementCodec.userData(comment: comment, type: NFTNL_UDATA_RULE_COMMENT.rawValue).withUnsafeBytes {
                    _ = nftnl_rule_set_data(r.raw, KernelNumbers.attr(NFTNL_RULE_USERDATA.rawValue), $0.baseAddress, UInt32($0.count))
                }
            }
            let h = header(NFT_MSG_NEWRULE, flags: NLM_F_CREATE | NLM_F_APPEND)
            nftnl_rule_nlmsg_build_payload(h, r.raw)
            buffer.commit(h)
        case .addSet(let s):
            let set = setObject(s.name)
            var flags = s.isMap ? NFT_SET_MAP.rawValue : 0
            if let t = s.timeout {
                flags |= NFT_SET_TIMEOUT.rawValue | NFT_SET_EVAL.rawValue
                nftnl_set_set_u64(set.raw, KernelNumbers.attr(NFTNL_SET_TIMEOUT.rawValue), UInt64(t) * 1000)
            }
            nftnl_set_set_u32(set.raw, KernelNumbers.attr(NFTNL_SET_FLAGS.rawValue), flags)
            nftnl_set_set_u32(set.raw, KernelNumbers.attr(NFTNL_SET_KEY_TYPE.rawValue), s.nftKeyType)
            nftnl_set_set_u32(set.raw, KernelNumbers.attr(NFTNL_SET_KEY_LEN.rawValue), UInt32(s.keyLength))
            // The kernel requires a transaction-local id for every new set.
            nftnl_set_set_u32(set.raw, KernelNumbers.attr(NFTNL_SET_ID.rawValue), seq + 1)
            switch s.data {
            case .none: break
            case .verdict:
                nftnl_set_set_u32(set.raw, KernelNumbers.attr(NFTNL_SET_DATA_TYPE.rawValue), NFT_DATA_VERDICT.rawValue)
                nftnl_set_set_u32(set.raw, KernelNumbers.attr(NFTNL_SET_DATA_LEN.rawValue), 0)
            case .values(let f):
                nftnl_set_set_u32(set.raw, KernelNumbers.attr(NFTNL_SET_DATA_TYPE.rawValue), NamedSet.nftType(f))
                nftnl_set_set_u32(set.raw, KernelNumbers.attr(NFTNL_SET_DATA_LEN.rawValue), UInt32(s.dataLength))
            }
            if let typeof = s.typeof, let udata = SetTypeof.userData[typeof] {
                udata.withUnsafeBytes {
                    _ = nftnl_set_set_data(set.raw, KernelNumbers.attr(NFTNL_SET_USERDATA.rawValue), $0.baseAddress, UInt32($0.count))
                }
            }
            let h = header(NFT_MSG_NEWSET, flags: NLM_F_CREATE)
            nftnl_set_nlmsg_build_payload(h, set.raw)
            buffer.commit(h)
        case .deleteSet(let name):
            let set = setObject(name)
            let h = header(NFT_MSG_DELSET, flags: 0)
            nftnl_set_nlmsg_build_payload(h, set.raw)
            buffer.commit(h)
        case .deleteForeign(let o):
            switch o.kind {
            case .object(let type):
                let obj = NftObject()
                nftnl_obj_set_str(obj.raw, KernelNumbers.attr(NFTNL_OBJ_TABLE), table)
                nftnl_obj_set_str(obj.raw, KernelNumbers.attr(NFTNL_OBJ_NAME), o.name)
                nftnl_obj_set_u32(obj.raw, KernelNumbers.attr(NFTNL_OBJ_TYPE), type)
                let h = header(NFT_MSG_DELOBJ, flags: 0)
                nftnl_obj_nlmsg_build_payload(h, obj.raw)
                buffer.commit(h)
            case .flowtable:
                let ft = NftFlowtable()
                nftnl_flowtable_set_str(ft.raw, KernelNumbers.attr(NFTNL_FLOWTABLE_TABLE.rawValue), table)
                nftnl_flowtable_set_str(ft.raw, KernelNumbers.attr(NFTNL_FLOWTABLE_NAME.rawValue), o.name)
                let h = header(NFT_MSG_DELFLOWTABLE, flags: 0)
                nftnl_flowtable_nlmsg_build_payload(h, ft.raw)
                buffer.commit(h)
            }
        case .addElements(let name, let elements):
            encodeElements(name, elements, type: NFT_MSG_NEWSETELEM, flags: NLM_F_CREATE, withData: true)
        case .deleteElements(let name, let elements):
            encodeElements(name, elements, type: NFT_MSG_DELSETELEM, flags: 0, withData: false)
        }
    }

    private mutating func encodeElements(
        _ name: String, _ elements: [SetElement], type: nf_tables_msg_types,
        flags: Int32, withData: Bool
    ) {
        var start = 0
        while start < elements.count {
            let range = start..<min(start + elementsPerMessage, elements.count)
            let set = setObject(name)
            for e in elements[range] { nftnl_set_elem_add(set.raw, ElementCodec.make(e, withData: withData)) }
            let h = header(type, flags: flags)
            elementsForSeq[opForSeq.count - 1] = range
            offsetForSeq[opForSeq.count - 1] = lastHeaderOffset
            nftnl_set_elems_nlmsg_build_payload(h, set.raw)
            buffer.commit(h)
            start += elementsPerMessage
        }
    }

    /// Which element of the element message `s` holds byte `offset` of that message (the
    /// kernel's extended-ack offset of the attribute it refused), counted from the message's
    /// first element; nil when the offset is not inside one.
    func element(inMessage s: UInt32, atOffset offset: Int) -> Int? {
        let index = Int(s &- firstSeq) - 1
        guard index >= 0, let start = offsetForSeq[index] else { return nil }
        let message = UnsafeRawBufferPointer(start: buffer.base + start, count: buffer.length - start)
        let length = Int(message.loadUnaligned(as: nlmsghdr.self).nlmsg_len)
        guard offset < length else { return nil }
        // nlmsghdr, nfgenmsg, then table (1), set (2) and the element list (3), a nest of
        // one NFTA_LIST_ELEM nest per element.
        var at = MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size
        while at + 4 <= length {
            let len = Int(message.loadUnaligned(fromByteOffset: at, as: UInt16.self))
            let type = Int(message.loadUnaligned(fromByteOffset: at + 2, as: UInt16.self)) & Int(NLA_TYPE_MASK_VALUE)
            guard len >= 4 else { return nil }
            if type == Int(NFTA_SET_ELEM_LIST_ELEMENTS.rawValue), offset >= at, offset < at + len {
                var e = at + 4, i = 0
                while e + 4 <= at + len {
                    let elen = Int(message.loadUnaligned(fromByteOffset: e, as: UInt16.self))
                    guard elen >= 4 else { return nil }
                    if offset >= e && offset < e + elen { return i }
                    e += (elen + 3) & ~3
                    i += 1
                }
                return nil
            }
            at += (len + 3) & ~3
        }
        return nil
    }

    private func chainObject(_ name: String) -> NftChain {
        let c = NftChain()
        nftnl_chain_set_str(c.raw, KernelNumbers.attr(NFTNL_CHAIN_TABLE.rawValue), table)
        nftnl_chain_set_str(c.raw, KernelNumbers.attr(NFTNL_CHAIN_NAME.rawValue), name)
        return c
    }

    private func ruleObject(chain: String) -> NftRule {
        let r = NftRule()
        nftnl_rule_set_str(r.raw, KernelNumbers.attr(NFTNL_RULE_TABLE.rawValue), table)
        nftnl_rule_set_str(r.raw, KernelNumbers.attr(NFTNL_RULE_CHAIN.rawValue), chain)
        return r
    }

    private func setObject(_ name: String) -> NftSet {
        let s = NftSet()
        nftnl_set_set_str(s.raw, KernelNumbers.attr(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(s.raw, KernelNumbers.attr(NFTNL_SET_NAME.rawValue), name)
        return s
    }
}

extension MessageBuffer {
    /// Batch begin/end markers are built by libnftnl at `tail`; count them.
    func commitBatchMarker() {
        commit(UnsafeMutableRawPointer(tail).assumingMemoryBound(to: nlmsghdr.self))
    }
}

/// Set elements to and from libnftnl. The element's comment travels as user data, in the TLV
/// layout nft uses (NFTNL_UDATA_SET_ELEM_COMMENT), so `nft list` shows it.
enum ElementCodec {
    /// Returns a new element; `nftnl_set_elem_add` hands its ownership to the set.
    static func make(_ e: SetElement, withData: Bool) -> OpaquePointer {
        let el = nftnl_set_elem_alloc()!
        let key = e.keyBytes
        key.withUnsafeBytes { _ = nftnl_set_elem_set(el, KernelNumbers.attr(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count)) }
        guard withData else { return el }
        if let v = e.verdict {
            nftnl_set_elem_set_u32(el, KernelNumbers.attr(NFTNL_SET_ELEM_VERDICT), UInt32(bitPattern: KernelNumbers.verdictCode(v)))
            if let c = v.target { nftnl_set_elem_set_str(el, KernelNumbers.attr(NFTNL_SET_ELEM_CHAIN), c) }
        }
        if let d = e.dataBytes {
            d.withUnsafeBytes { _ = nftnl_set_elem_set(el, KernelNumbers.attr(NFTNL_SET_ELEM_DATA), $0.baseAddress, UInt32($0.count)) }
        }
        if let c = e.comment {
            userData(comment: c, type: NFTNL_UDATA_SET_ELEM_COMMENT.rawValue).withUnsafeBytes {
                _ = nftnl_set_elem_set(el, KernelNumbers.attr(NFTNL_SET_ELEM_USERDATA), $0.baseAddress, UInt32($0.count))
            }
        }
        return el
    }

    /// A comment as one user-data TLV (type, length, the text and its NUL), as nft writes it.
    /// The model keeps comments within nft's 128 bytes; a longer one is cut here rather than
    /// overflow the one-byte length.
    static func userData(comment: String, type: UInt32) -> [UInt8] {
        let value = Array(comment.utf8.prefix(Int(NFTNL_UDATA_COMMENT_MAXLEN))) + [0]
        return [UInt8(type), UInt8(value.count)] + value
    }

    /// The comment of an object's user data as libnftnl's getter gives it (nil when the
    /// object has none): tables, rules and set elements alike.
    static func comment(type: UInt32, _ get: (inout UInt32) -> UnsafeRawPointer?) -> String? {
        var len: UInt32 = 0
        guard let p = get(&len) else { return nil }
        return comment(fromUserData: Array(UnsafeRawBufferPointer(start: p, count: Int(len))), type: type)
    }

    static func comment(fromUserData bytes: [UInt8], type wanted: UInt32 = NFTNL_UDATA_SET_ELEM_COMMENT.rawValue) -> String? {
        var i = 0
        while i + 2 <= bytes.count {
            let type = bytes[i], len = Int(bytes[i + 1])
            guard i + 2 + len <= bytes.count else { return nil }
            if type == UInt8(wanted) {
                var v = Array(bytes[(i + 2)..<(i + 2 + len)])
                if v.last == 0 { v.removeLast() }
                return String(decoding: v, as: UTF8.self)
            }
            i += 2 + len
        }
        return nil
    }
}

/// nft keeps a set's `typeof` description in the set's user data, and prints it back from there.
/// These are the bytes nft 1.0.x writes for the typeofs svcnat uses (a TLV list: key byte order,
/// data byte order, the key expression, the data expressions), so `nft list ruleset` shows the
/// endpoint maps exactly as `nft -f` of the dry-run output creates them.
enum SetTypeof {
    static let userData: [String: [UInt8]] = [
        "numgen random mod 1 : ip daddr . th dport": endpointMap(addressDescription: 0x0c, daddrField: 0x0c),
        "numgen random mod 1 : ip6 daddr . th dport": endpointMap(addressDescription: 0x0d, daddrField: 0x09)
    ]

    /// `numgen random mod 1 : ip daddr . th dport`: the key (numgen, random, modulus 1, offset
    /// 0) and the data (a concatenation of two payload fields, each named by nft's protocol
    /// description and field numbers: ip or ip6 daddr, then th dport).
    static func endpointMap(addressDescription: UInt8, daddrField: UInt8) -> [UInt8] {
        [
            0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x1a, 0x00, 0x04,
            0x17, 0x00, 0x00, 0x00, 0x01, 0x12, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x00,
            0x00, 0x00, 0x02, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x34, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00,
            0x01, 0x2c, 0x00, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x04, addressDescription, 0x00,
            0x00, 0x00, 0x01, 0x04, daddrField, 0x00, 0x00, 0x00, 0x01, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00,
            0x01, 0x0c, 0x00, 0x04, 0x0b, 0x00, 0x00, 0x00, 0x01, 0x04, 0x02, 0x00, 0x00, 0x00, 0x06, 0x04,
            0x00, 0x00, 0x00, 0x00
        ]
    }

    static func typeof(forUserData bytes: [UInt8]) -> String? {
        userData.first { $0.value == bytes }?.key
    }
}
