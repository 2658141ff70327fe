import NFTModel
import SvcnatModel

/// Kubernetes API responses (JSON, read by `JSONReader` without YAML) into model values:
/// lists with their resourceVersion, and watch events. Objects are decoded and validated exactly
/// as manifests are; one that fails is reported and left out, as a bad file is.
public enum APIObjects {
    /// One object: its key (namespace/name), resourceVersion, and the model value (a state
    /// holding just it; empty for a kind svcnat does not program, such as Node).
    public struct Object: Sendable {
        public var key: String
        public var resourceVersion: String?
        public var labels: [String: String]
        public var state: ClusterState
        public var node: NodeInfo?
    }

    public struct NodeInfo: Hashable, Sendable {
        public var name: String
        public var zone: String?
        public var addresses: [String]
        /// false while the Node is being deleted (a deletionTimestamp) or the cluster
        /// autoscaler is removing it (its ToBeDeletedByClusterAutoscaler taint): kube-proxy's
        /// `nodeEligible`, which load balancers' health checks read to drain the node.
        public var eligible = true
    }

    public struct List: Sendable {
        public var resourceVersion: String
        public var objects: [Object]
        public var errors: [InputError]
        /// More pages follow (a chunked list): ask again with `continue` set to this.
        public var continueToken: String?
        /// Keys (namespace/name) of the items that failed to decode or validate: their last
        /// good versions stay in force, as a bad manifest file's do.
        public var failedKeys: [String] = []

        public init(
            resourceVersion: String, objects: [Object] = [], errors: [InputError] = [],
            continueToken: String? = nil, failedKeys: [String] = []
        ) {
            self.resourceVersion = resourceVersion
            self.objects = objects
            self.errors = errors
            self.continueToken = continueToken
            self.failedKeys = failedKeys
        }
    }

    public enum Event: Sendable {
        case added(Object), modified(Object), deleted(Object)
        case bookmark(resourceVersion: String)
        /// An ERROR event: the Status object's code (410 when the resourceVersion is too old).
        case error(code: Int, message: String)
    }

    public struct DecodeError: Error, CustomStringConvertible {
        public var description: String
    }

    static func parse(_ bytes: [UInt8]) throws -> Value {
        var reader = JSONReader(bytes)
        do {
            guard let v = try reader.single() else { throw DecodeError(description: "empty response") }
            return v
        } catch let e as DecodeError { throw e } catch {
            throw DecodeError(description: "not valid JSON: \(error)")
        }
    }

    /// A list response (`ServiceList`, `EndpointSliceList`, `NodeList`); `kind` and
    /// `apiVersion` are its items' (list items carry neither). The items are located, then
    /// each is built and decoded alone: the page never exists as one tree.
    public static func list(_ text: String, kind: String, apiVersion: String, source: String) throws -> List {
        try list(Array(text.utf8), kind: kind, apiVersion: apiVersion, source: source)
    }

    /// The same, from the response's bytes as they came (no String in between).
    public static func list(_ bytes: [UInt8], kind: String, apiVersion: String, source: String) throws -> List {
        try objects(of: page(bytes, source: source), kind: kind, apiVersion: apiVersion, source: source)
    }

    /// A list response checked for syntax and its items located, but not yet built: enough to
    /// know the page's resourceVersion and continue token (so the next page can be asked for
    /// while this one is decoded).
    public struct Page: Sendable {
        let bytes: [UInt8]
        /// Where the items are in `bytes`, or empty when `whole` holds them.
        let offsets: [Range<Int>]
        let whole: [Value]
        public let resourceVersion: String
        public let continueToken: String?
    }

    public static func page(_ bytes: [UInt8], source: String) throws -> Page {
        var reader = JSONReader(bytes)
        let top: Value
        var offsets: [Range<Int>] = []
        var whole: [Value] = []
        do {
            guard let (doc, items) = try reader.nextLocatingItems() else { throw DecodeError(description: "empty response") }
            top = doc.value
            offsets = items
            // A server that leaves out the list's kind: its items were read whole.
            if !doc.streamed {
                whole = Field(node: top, context: Field.Context(file: source))["items"].list.compactMap(\.node)
            }
            guard try reader.nextLocatingItems() == nil else { throw DecodeError(description: "unexpected text after the list") }
        } catch let e as DecodeError { throw e } catch {
            throw DecodeError(description: "not valid JSON: \(error)")
        }
        let f = Field(node: top, context: Field.Context(file: source))
        guard let rv = f["metadata"]["resourceVersion"].string else {
            throw DecodeError(description: "\(source): list without metadata.resourceVersion")
        }
        let token = f["metadata"]["continue"].string
        return Page(
            bytes: bytes, offsets: offsets, whole: whole, resourceVersion: rv,
            continueToken: token?.isEmpty == false ? token : nil)
    }

    /// A located page's items, built and decoded on all cores, in the page's order.
    public static func objects(of page: Page, kind: String, apiVersion: String, source: String) throws -> List {
        @Sendable func take(_ item: Value) -> (Object?, failedKey: String?, [InputError]) {
            let (o, errors) = object(item, kind: kind, apiVersion: apiVersion, source: source)
            if o != nil { return (o, nil, errors) }
            let f = Field(node: item, context: Field.Context(file: source))
            guard let name = f["metadata"]["name"].string else { return (nil, nil, errors) }
            let ns = f["metadata"]["namespace"].string ?? ""
            return (nil, ns.isEmpty ? name : "\(ns)/\(name)", errors)
        }
        let bytes = page.bytes
        let located = Parallel.map(page.offsets, minimumPerWorker: 128) { offset in
            Result { take(try JSONReader.item(bytes, at: offset)) }
        }
        var out = List(resourceVersion: page.resourceVersion, continueToken: page.continueToken)
        out.objects.reserveCapacity(page.offsets.count + page.whole.count)
        do {
            for r in located + page.whole.map({ .success(take($0)) }) {
                let (o, failed, errors) = try r.get()
                if let o { out.objects.append(o) }
                if let failed { out.failedKeys.append(failed) }
                out.errors += errors
            }
        } catch {
            throw DecodeError(description: "not valid JSON: \(error)")
        }
        return out
    }

    /// One line of a watch stream.
    public static func event(_ line: String, kind: String, apiVersion: String, source: String) throws -> (Event?, [InputError]) {
        try event(Array(line.utf8), kind: kind, apiVersion: apiVersion, source: source)
    }

    public static func event(_ line: [UInt8], kind: String, apiVersion: String, source: String) throws -> (Event?, [InputError]) {
        let v = try parse(line)
        let ctx = Field.Context(file: source)
        let f = Field(node: v, context: ctx)
        guard let type = f["type"].string, let obj = f["object"].node else {
            throw DecodeError(description: "\(source): a watch event without type or object")
        }
        switch type {
        case "BOOKMARK":
            return (f["object"]["metadata"]["resourceVersion"].string.map { .bookmark(resourceVersion: $0) }, [])
        case "ERROR":
            let code = f["object"]["code"].int ?? 0
            return (.error(code: code, message: f["object"]["message"].string ?? "watch error \(code)"), [])
        case "ADDED", "MODIFIED", "DELETED":
            let (o, errors) = object(obj, kind: kind, apiVersion: apiVersion, source: source)
            guard let o else { return (nil, errors) }
            return (type == "ADDED" ? .added(o) : type == "MODIFIED" ? .modified(o) : .deleted(o), errors)
        default:
            throw DecodeError(description: "\(source): unknown watch event type \(type)")
        }
    }

    static func object(_ v: Value, kind: String, apiVersion: String, source: String) -> (Object?, [InputError]) {
        let ctx = Field.Context(file: source)
        let f = Field(node: v, context: ctx)
        let m = f["metadata"]
        // A watch or list is of one kind: an object that says it is another is not taken for it.
        if case .scalar(let own, _)? = f["kind"].node, own != kind {
            let name = m["name"].string ?? "?"
            return (
                nil,
                [InputError(file: source, object: "\(own) \(name)", field: "kind", message: "a \(own) in the \(kind) collection; skipped")]
            )
        }
        guard let name = m["name"].string else {
            return (nil, [InputError(file: source, object: kind, field: "metadata.name", message: "missing")])
        }
        let namespace = m["namespace"].string ?? ""
        let key = namespace.isEmpty ? name : "\(namespace)/\(name)"
        let labels = m["labels"].stringMap
        var o = Object(key: key, resourceVersion: m["resourceVersion"].string, labels: labels, state: ClusterState())
        if kind == "Node" {
            let zone = labels["topology.kubernetes.io/zone"] ?? labels["failure-domain.beta.kubernetes.io/zone"]
            let addresses = f["status"]["addresses"].list.compactMap { $0["address"].string }
            o.node = NodeInfo(name: name, zone: zone, addresses: addresses)
            let tainted = f["spec"]["taints"].list.contains { $0["key"].string == "ToBeDeletedByClusterAutoscaler" }
            o.node?.eligible = !m["deletionTimestamp"].isPresent && !tainted
            return (o, ctx.errors)
        }
        // The server's objects may carry fields of a newer API: nobody misspelt them.
        var d = ManifestDecoder(checksFields: false)
        d.decode(object: v, kind: kind, apiVersion: apiVersion, file: source)
        guard d.errors.isEmpty else { return (nil, d.errors) }
        o.state = d.state
        return (o, [])
    }
}
