import Dispatch
import Foundation
import NFTModel
import SvcnatModel
import Synchronization
import Yams

/// Turns manifest text into model objects, validating what svcnat relies on the way the API
/// server would, and naming the file, object and field of every problem.
public struct ManifestDecoder: Sendable {
    public private(set) var state = ClusterState()
    public private(set) var warnings: [Warning] = []
    public private(set) var errors: [InputError] = []
    /// Objects not programmed: of kinds svcnat does not read, or for another proxy.
    public private(set) var skipped: [SkippedObject] = []
    private var seen: [String: String] = [:]  // "Kind ns/name" -> file
    /// The file of each object taken in ("Service ns/name" -> file).
    public var origins: [String: String] { seen }

    /// Whether fields the kinds do not have are warned about (manifests; not API objects).
    let checksFields: Bool

    public init(checksFields: Bool = true) { self.checksFields = checksFields }

    /// A warning about a file as a whole.
    mutating func warn(file: String, _ text: String) { warnings.append(Warning(text: "\(file): \(text)")) }

    /// The kinds svcnat reads, with the versions it knows.
    static let known: [String: Set<String>] = [
        "Service": ["v1"], "Endpoints": ["v1"], "Pod": ["v1"],
        "EndpointSlice": ["discovery.k8s.io/v1"],
        "Ingress": ["networking.k8s.io/v1", "networking.k8s.io/v1beta1", "extensions/v1beta1"]
    ]

    public mutating func decode(_ text: String, file: String) { decode(utf8: Array(text.utf8), file: file, text: text) }

    /// The same, from bytes already checked to be UTF-8 (a file as read): JSON is read from
    /// them with no String made of the whole file. The bytes are let go once JSON's objects
    /// are built, before they are taken in, so a 28 MB List is not held beside its objects
    /// while they are merged.
    mutating func decode(utf8 bytes: consuming [UInt8], file: String, text: String? = nil) {
        guard JSONReader.looksLikeJSON(bytes, file: file) else {
            if let why = decodeYAML(text ?? String(decoding: copy bytes, as: UTF8.self), bytes, file: file) {
                errors.append(InputError(file: file, message: why))
            }
            return
        }
        switch Self.readJSON(bytes, file: file) {
        case .success(let read):
            bytes = []
            take(read, file: file)
        case .failure(let jsonError):
            // Text that opens like JSON but is not, in a file not named .json, may be YAML (JSON
            // documents between `---` lines): YAML reads it, and if YAML fails too the JSON error
            // is the one reported.
            if file.lowercased().hasSuffix(".json")
                || decodeYAML(text ?? String(decoding: copy bytes, as: UTF8.self), bytes, file: file) != nil
            {
                errors.append(InputError(file: file, message: "not valid JSON: \(jsonError)"))
            }
        }
    }

    /// YAML: the fast reader where it takes the file, else Yams; why the file is refused as a
    /// whole, or nil.
    mutating func decodeYAML(_ text: String, _ bytes: [UInt8], file: String) -> String? {
        var reader = YAMLReader(bytes)
        if let docs = reader.read() {
            let kept = docs.filter { !skipsUnknownKind($0, file: file) }
            for (i, node) in kept.enumerated() {
                let ctx = Field.Context(file: file)
                decodeObject(Field(node: node, context: ctx), document: kept.count > 1 ? i : nil)
                errors += ctx.errors
            }
            return nil
        }
        return decodeWithYams(text, file: file)
    }

    /// A document of a kind svcnat does not read is warned about and skipped, as Yams' path
    /// skips it before expanding its aliases.
    mutating func skipsUnknownKind(_ v: Value, file: String) -> Bool {
        guard case .scalar(let kind, _)? = v[key: "kind"], Self.known[kind] == nil, !kind.hasSuffix("List") else { return false }
        func meta(_ k: String) -> String? { if case .scalar(let s, _)? = v[key: "metadata"]?[key: k] { s } else { nil } }
        skip(kind: kind, namespace: meta("namespace"), name: meta("name") ?? "", file: file)
        return true
    }

    /// An object of a kind svcnat does not read: counted for the summary, or, when the kind
    /// looks like a slip for one svcnat reads, warned about with the suggestion.
    mutating func skip(kind: String, namespace: String?, name: String, file: String) {
        if let k = Kinds.suggestion(for: kind, among: Self.known.keys) {
            warnings.append(
                Warning(
                    text:
                        "\(file): \(kind) \(namespace ?? "default")/\(name): kind \(kind) is not one svcnat reads; did you mean \(k)? skipped"
                ))
            return
        }
        let ns = Kinds.clusterScoped.contains(kind) ? nil : namespace ?? "default"
        skipped.append(SkippedObject(file: file, kind: kind, namespace: ns, name: name))
    }

    mutating func decodeWithYams(_ text: String, file: String) -> String? {
        var nodes: [Value] = []
        // One budget for the file: its documents together may not expand beyond it.
        var budget = Value.Budget(forInputBytes: text.utf8.count)
        do {
            // Parser.nextRoot throws on a syntax error; compose_all's sequence would just stop.
            // The encoding given: its default reads the environment on every parser (8% of a 10,000-file folder).
            let parser = try Parser(yaml: text, resolver: .basic, encoding: .utf8)
            while let node = try parser.nextRoot() {
                // A kind svcnat skips is skipped before its aliases are expanded.
                if let kind = Value.peek(node, "kind"), Self.known[kind] == nil, !kind.hasSuffix("List") {
                    skip(
                        kind: kind, namespace: Value.peek(node, "metadata", "namespace"), name: Value.peek(node, "metadata", "name") ?? "",
                        file: file)
                    continue
                }
                nodes.append(try Value.convert(node, &budget))
            }
        } catch let e as Value.TooLarge {
            return e.description
        } catch {
            return "not valid YAML or JSON: \(Self.yamlMessage(error))"
        }
        for (i, node) in nodes.enumerated() {
            let ctx = Field.Context(file: file)
            decodeObject(Field(node: node, context: ctx), document: nodes.count > 1 ? i : nil)
            errors += ctx.errors
        }
        return nil
    }

    /// What a JSON file holds: the decoded runs of its lists' items, and its other documents.
    struct JSONRead {
        var parts: [ManifestDecoder] = []
        var documents: [Value] = []
    }

    /// JSON without YAML: a list's items are located first, then built and decoded one by one
    /// (on all cores), so the whole document never exists as one tree. A syntax error refuses
    /// the whole file, as YAML's does: nothing of it is taken in, and the error is returned.
    static func readJSON(_ bytes: [UInt8], file: String) -> Swift.Result<JSONRead, JSONReader.SyntaxError> {
        var reader = JSONReader(bytes)
        var read = JSONRead()
        do {
            while let (doc, items) = try reader.nextLocatingItems() {
                if doc.streamed {
                    read.parts += try Self.decodeItems(bytes, at: items, file: file)
                } else {
                    read.documents.append(doc.value)
                }
            }
        } catch {
            return .failure(error as? JSONReader.SyntaxError ?? JSONReader.SyntaxError(line: 0, column: 0, message: "\(error)"))
        }
        return .success(read)
    }

    /// Takes in what `readJSON` read from `file`.
    mutating func take(_ read: consuming JSONRead, file: String) {
        for part in read.parts { merge(part) }
        for (i, value) in read.documents.enumerated() {
            let ctx = Field.Context(file: file)
            decodeObject(Field(node: value, context: ctx), document: read.documents.count > 1 ? i : nil)
            errors += ctx.errors
        }
    }

    /// A list's items (at these offsets, already checked for syntax), built and decoded in
    /// contiguous runs on all cores; the runs come back in order.
    static func decodeItems(_ bytes: [UInt8], at offsets: [Range<Int>], file: String) throws -> [ManifestDecoder] {
        let workers = min(ProcessInfo.processInfo.activeProcessorCount, offsets.count / 256)
        @Sendable func run(_ range: Range<Int>) -> Result<ManifestDecoder, Error> {
            var d = ManifestDecoder()
            for k in range {
                let value: Value
                do { value = try JSONReader.item(bytes, at: offsets[k]) } catch { return .failure(error) }
                let ctx = Field.Context(file: file)
                d.decodeObject(Field(node: value, context: ctx), document: nil)
                d.errors += ctx.errors
            }
            return .success(d)
        }
        guard workers > 1 else { return [try run(0..<offsets.count).get()] }
        let per = (offsets.count + workers - 1) / workers
        let runs = (0..<workers).map { w in w * per..<min(offsets.count, (w + 1) * per) }
        let results = Mutex<[Int: Result<ManifestDecoder, Error>]>([:])
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let r = run(runs[w])
            results.withLock { $0[w] = r }
        }
        return try results.withLock { done in try (0..<workers).map { try done[$0]!.get() } }
    }

    /// Takes in what another decoder read from later files, as if this one had read them: an
    /// object this one already has is refused there as "defined twice", as it would have been.
    mutating func merge(_ other: ManifestDecoder) {
        warnings += other.warnings
        errors += other.errors
        skipped += other.skipped
        // Every object read is named in `seen` first, so with nothing there, nothing here can meet
        // the other's objects: they are taken whole (the first file of many, or the only one).
        if seen.isEmpty {
            state = other.state
            seen = other.seen
            return
        }
        // Nor when no name the other read is named here (the runs of one List, files that do
        // not overlap): the lists are appended whole, with no name made again per object.
        if !other.seen.keys.contains(where: { seen[$0] != nil }) {
            seen.merge(other.seen) { mine, _ in mine }
            state.services += other.state.services
            state.endpointSlices += other.state.endpointSlices
            state.endpoints += other.state.endpoints
            state.pods += other.state.pods
            state.ingresses += other.state.ingresses
            return
        }
        func take<T>(_ items: [T], _ kind: String, _ meta: (T) -> ObjectMeta, into list: WritableKeyPath<ClusterState, [T]>) {
            for item in items {
                let key = meta(item).key
                let id = "\(kind) \(key)"
                let file = other.seen[id] ?? ""
                if let first = seen[id] {
                    errors.append(
                        InputError(file: file, object: id, field: "metadata.name", message: "defined twice (also in \(first))"))
                    continue
                }
                seen[id] = file
                state[keyPath: list].append(item)
            }
        }
        take(other.state.services, "Service", \.meta, into: \.services)
        take(other.state.endpointSlices, "EndpointSlice", \.meta, into: \.endpointSlices)
        take(other.state.endpoints, "Endpoints", \.meta, into: \.endpoints)
        take(other.state.pods, "Pod", \.meta, into: \.pods)
        take(other.state.ingresses, "Ingress", \.meta, into: \.ingresses)
    }

    /// A manifest to decode: a text at hand, or a file the worker reads.
    public enum Input: Sendable {
        case text(file: String, String)
        case file(String)
    }

    public enum Outcome: Sendable {
        case decoded(ManifestDecoder)
        /// The file could not be read: why, in words for the error.
        case unreadable(file: String, why: String)
    }

    /// Each input read (a file, by the worker that decodes it) and decoded on a decoder of
    /// its own, on all cores (files are independent until their objects meet), in the order
    /// given.
    public static func decodeEach(_ inputs: [Input]) -> [Outcome] {
        let workers = min(ProcessInfo.processInfo.activeProcessorCount, inputs.count / 32)
        @Sendable func one(_ i: Int) -> Outcome {
            var d = ManifestDecoder()
            switch inputs[i] {
            case .text(let file, let text): d.decode(text, file: file)
            case .file(let file):
                switch ManifestSource.readUTF8(file) {
                case .success(let bytes): d.decode(utf8: consume bytes, file: file)
                case .failure(let e): return .unreadable(file: file, why: e.why)
                }
            }
            return .decoded(d)
        }
        guard workers > 1 else { return inputs.indices.map(one) }
        let results = Results(count: inputs.count)
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var mine: [(Int, Outcome)] = []
            for i in stride(from: w, to: inputs.count, by: workers) { mine.append((i, one(i))) }
            results.put(mine)
        }
        return results.all
    }

    private final class Results: Sendable {
        let slots: Mutex<[Outcome?]>
        init(count: Int) { slots = Mutex(Array(repeating: nil, count: count)) }
        func put(_ done: [(Int, Outcome)]) { slots.withLock { for (i, d) in done { $0[i] = d } } }
        var all: [Outcome] { slots.withLock { $0.map { $0! } } }
    }

    /// Decodes one object given as a parsed value, with `kind` and `apiVersion` filled in when
    /// the object lacks them (items of an API list do). The API source uses it.
    mutating func decode(object v: Value, kind: String, apiVersion: String, file: String) {
        var v = v
        if case .mapping(var m) = v {
            if v[key: "kind"] == nil { m.append(("kind", .scalar(kind, plain: false))) }
            if v[key: "apiVersion"] == nil { m.append(("apiVersion", .scalar(apiVersion, plain: false))) }
            v = .mapping(m)
        }
        let ctx = Field.Context(file: file)
        decodeObject(Field(node: v, context: ctx), document: nil)
        errors += ctx.errors
    }

    static func yamlMessage(_ error: Error) -> String {
        let s = String(describing: error)
        return s.split(separator: "\n").map { $0.trimmingCharacters(in: " ") }.filter { !$0.isEmpty }.joined(separator: " ")
    }

    mutating func decodeObject(_ f: Field, document: Int?) {
        guard f.isPresent else { return }  // an empty document
        guard f.isMapping else {
            f.context.fail(
                at: document.map { "document \($0 + 1)" } ?? "", "expected a Kubernetes object (a mapping with apiVersion and kind)")
            return
        }
        let kind = f["kind"].string ?? ""
        let apiVersion = f["apiVersion"].string ?? ""
        if kind == "List" || kind.hasSuffix("List") && f["items"].isPresent {
            // Each item is read with a context of its own, so that what it records of its fields
            // goes with it.
            for item in f["items"].list {
                let ctx = Field.Context(file: f.context.file, root: item.path)
                decodeObject(Field(node: item.node, context: ctx), document: nil)
                f.context.errors += ctx.errors
            }
            return
        }
        let name = f["metadata"]["name"].string ?? ""
        let namespace = f["metadata"]["namespace"].string ?? "default"
        f.context.object = "\(kind.isEmpty ? "object" : kind) \(namespace)/\(name)"
        if kind.isEmpty { f["kind"].fail("missing"); return }
        if apiVersion.isEmpty { f["apiVersion"].fail("missing"); return }

        guard let versions = Self.known[kind] else {
            skip(kind: kind, namespace: f["metadata"]["namespace"].string, name: name, file: f.context.file)
            return
        }
        guard versions.contains(apiVersion) else {
            f["apiVersion"].fail(
                "\(apiVersion) is not a supported version of \(kind) (supported: \(versions.sorted().joined(separator: ", ")))")
            return
        }
        guard let meta = objectMeta(f, kind: kind) else { return }
        if checksFields, let node = f.node {
            for path in Schema.of(kind: kind, apiVersion: apiVersion).unknownFields(of: node) {
                warn(f, "unknown field \"\(path)\"")
            }
        }
        // Labels by which API mode's watch leaves objects out (kube-proxy's selector) leave them
        // out here too: a `kubectl get -o yaml` export programs only what this proxy serves.
        if kind == "Service" || kind == "EndpointSlice" {
            if let proxy = meta.labels[Self.proxyNameLabel] {
                skipped.append(
                    SkippedObject(
                        file: f.context.file, kind: kind, namespace: meta.namespace, name: meta.name,
                        reason: "labelled \(Self.proxyNameLabel)=\(proxy): another proxy serves it"))
                return
            }
            if meta.labels[Self.headlessLabel] != nil {
                skipped.append(
                    SkippedObject(
                        file: f.context.file, kind: kind, namespace: meta.namespace, name: meta.name,
                        reason: "labelled \(Self.headlessLabel): headless, which no proxy programs"))
                return
            }
        }
        let id = "\(kind) \(meta.key)"
        if let other = seen[id] {
            f.context.fail(at: "metadata.name", "defined twice (also in \(other))")
            return
        }
        seen[id] = f.context.file
        switch kind {
        case "Service": if let s = service(f, meta) { state.services.append(s) }
        case "EndpointSlice": if let s = endpointSlice(f, meta) { state.endpointSlices.append(s) }
        case "Endpoints": if let e = endpoints(f, meta) { state.endpoints.append(e) }
        case "Pod": if let p = pod(f, meta) { state.pods.append(p) }
        case "Ingress": if let i = ingress(f, meta, beta: apiVersion.hasSuffix("v1beta1")) { state.ingresses.append(i) }
        default: break
        }
    }

    static let proxyNameLabel = "service.kubernetes.io/service-proxy-name"
    static let headlessLabel = "service.kubernetes.io/headless"

    mutating func warn(_ f: Field, _ text: String) {
        warnings.append(Warning(text: "\(f.context.file): \(f.context.object ?? "object"): \(text)"))
    }

    // MARK: metadata

    func objectMeta(_ f: Field, kind: String) -> ObjectMeta? {
        let m = f["metadata"]
        guard let name = m["name"].string, !name.isEmpty else { m["name"].fail("missing"); return nil }
        let namespace = m["namespace"].string ?? "default"
        var ok = true
        // Service names are RFC 1035 labels; other kinds are DNS-1123 subdomains.
        if kind == "Service" {
            if let why = Validation.dns1035Label(name) { m["name"].fail("\"\(name)\" is not a valid Service name: \(why)"); ok = false }
        } else if let why = Validation.dns1123Subdomain(name) {
            m["name"].fail("\"\(name)\" is not a valid name: \(why)"); ok = false
        }
        if let why = Validation.dns1123Label(namespace) {
            m["namespace"].fail("\"\(namespace)\" is not a valid namespace: \(why)"); ok = false
        }
        let labels = m["labels"].stringMap
        // Read where it has a meaning (EndpointSlices); its absence or a bad value is no error.
        let trigger = kind == "EndpointSlice" ? m["annotations"][ObjectMeta.triggerTimeAnnotation].string.flatMap(ObjectMeta.seconds) : nil
        return ok
            ? ObjectMeta(
                namespace: namespace, name: name, labels: labels, creationTimestamp: m["creationTimestamp"].string,
                lastChangeTriggerTime: trigger) : nil
    }

    // MARK: Service

    mutating func service(_ f: Field, _ meta: ObjectMeta) -> Service? {
        let spec = f["spec"]
        let typeText = spec["type"].string ?? "ClusterIP"
        guard let type = ServiceType(rawValue: typeText) else {
            spec["type"].fail("\"\(typeText)\" is not a Service type (ClusterIP, NodePort, LoadBalancer, ExternalName)")
            return nil
        }
        let errorsBefore = f.context.errors.count
        var ports: [ServicePort] = []
        var names = Set<String>()
        let portFields = spec["ports"].list
        for p in portFields {
            let name = p["name"].string ?? ""
            if !name.isEmpty {
                if let why = Validation.dns1123Label(name) {
                    p["name"].fail("\"\(name)\" is not a valid port name: \(why)")
                } else if !names.insert(name).inserted {
                    p["name"].fail("\"\(name)\" is used by another port")
                }
            } else if portFields.count > 1 {
                p["name"].fail("required when a Service has more than one port")
            }
            let proto = protocolField(p["protocol"])
            guard let port = portNumber(p["port"], required: true) else { continue }
            var target: IntOrString? = nil
            switch p["targetPort"].intOrString {
            case .int(let n)?:
                if !(1...65535).contains(n) { p["targetPort"].fail("\(n) is not a port (1-65535)") } else { target = .int(n) }
            case .string(let s)?:
                if let why = Validation.ianaServiceName(s) {
                    p["targetPort"].fail("\"\(s)\" is neither a port number nor a port name: \(why)")
                } else {
                    target = .string(s)
                }
            case nil: break
            }
            let nodePort = portNumber(p["nodePort"], required: false)
            if let proto { ports.append(ServicePort(name: name, proto: proto, port: port, targetPort: target, nodePort: nodePort)) }
        }
        if portFields.isEmpty && type != .externalName && spec["clusterIP"].string != "None" {
            spec["ports"].fail("a Service needs at least one port")
        }
        var seenPorts = Set<String>()
        for (i, p) in ports.enumerated() where !seenPorts.insert("\(p.port)/\(p.proto.rawValue)").inserted {
            spec["ports"].child("[\(i)]").fail("port \(p.port)/\(p.proto.rawValue) is listed twice")
        }

        let selector = spec["selector"].isPresent ? spec["selector"].stringMap : nil
        let affinity = spec["sessionAffinity"].string ?? "None"
        if affinity != "None" && affinity != "ClientIP" {
            spec["sessionAffinity"].fail("\"\(affinity)\" is not None or ClientIP")
        }
        var clusterIPs: [IPAddress] = []
        var headless = false
        // `clusterIPs` (dual-stack: one per family, the primary first) when present, else
        // `clusterIP`; each family's table programs its own.
        let ipFields = spec["clusterIPs"].list.isEmpty ? [spec["clusterIP"]] : spec["clusterIPs"].list
        let ipTexts = ipFields.compactMap { $0.string }
        if type == .externalName {
            // ExternalName Services are DNS only; kube-proxy programs nothing for them.
        } else if ipTexts.first == "None" {
            headless = true
        } else if !ipTexts.isEmpty, !ipTexts[0].isEmpty {
            for field in ipFields {
                guard let text = field.string else { continue }
                guard let ip = IPAddress(text) else {
                    field.fail("\"\(text)\" is not a valid IP address")
                    continue
                }
                if let why = Validation.specialAddress(ip) {
                    field.fail("\(text) \(why), which cannot be a Service address")
                } else if ip.isMulticastOrReserved {
                    field.fail("\(text) cannot be a Service address (multicast or reserved)")
                } else if clusterIPs.contains(where: { $0.family == ip.family }) {
                    field.fail("two \(ip.family.rawValue) addresses; a Service has at most one per family")
                }
                clusterIPs.append(ip)
            }
            if let v = spec["clusterIP"].string, let primary = IPAddress(v), let first = clusterIPs.first, primary != first {
                spec["clusterIPs"].fail("clusterIPs[0] must equal spec.clusterIP (\(v))")
            }
        }
        // Without a cluster IP the Service gets rules only with --allocate (ManifestReview
        // says so otherwise); these say which families it gets.
        var families: [IPFamily] = []
        for f in spec["ipFamilies"].list {
            guard let t = f.string else { continue }
            guard let family = IPFamily(rawValue: t) else { f.fail("\"\(t)\" is not IPv4 or IPv6"); continue }
            if families.contains(family) { f.fail("\(t) is listed twice") }
            families.append(family)
        }
        let familyPolicy = spec["ipFamilyPolicy"].string ?? "SingleStack"
        if !["SingleStack", "PreferDualStack", "RequireDualStack"].contains(familyPolicy) {
            spec["ipFamilyPolicy"].fail("\"\(familyPolicy)\" is not SingleStack, PreferDualStack or RequireDualStack")
        }
        let allocateNodePorts = spec["allocateLoadBalancerNodePorts"].bool ?? true
        if type == .clusterIP || type == .externalName || headless {
            for (i, p) in ports.enumerated() where p.nodePort != nil {
                spec["ports"].child("[\(i)]").child("nodePort").fail("only Services of type NodePort or LoadBalancer have node ports")
            }
        }
        let externalIPs = ipList(spec["externalIPs"], what: "an external IP")
        let lbIPs =
            type == .loadBalancer
            ? f["status"]["loadBalancer"]["ingress"].list.compactMap { entry -> IPAddress? in
                guard let s = entry["ip"].string, !s.isEmpty else { return nil }  // hostname-only ingress: nothing to program
                guard let ip = IPAddress(s) else { entry["ip"].fail("\"\(s)\" is not a valid IP address"); return nil }
                if let why = Validation.specialAddress(ip) {
                    entry["ip"].fail("\(s) \(why), which cannot be a load-balancer IP"); return nil
                }
                return ip
            } : []
        var ranges: [IPPrefix] = []
        for r in spec["loadBalancerSourceRanges"].list {
            guard let text = r.string else { continue }
            let t = text.trimmingCharacters(in: " ")
            guard let prefix = IPPrefix(t) else { r.fail("\"\(text)\" is not a CIDR such as 198.18.0.0/24 or 2001:db8::/64"); continue }
            ranges.append(prefix)
        }
        let etp = spec["externalTrafficPolicy"].string ?? "Cluster"
        if etp != "Cluster" && etp != "Local" { spec["externalTrafficPolicy"].fail("\"\(etp)\" is not Cluster or Local") }
        let itp = spec["internalTrafficPolicy"].string ?? "Cluster"
        if itp != "Cluster" && itp != "Local" { spec["internalTrafficPolicy"].fail("\"\(itp)\" is not Cluster or Local") }
        let healthCheckNodePort = portNumber(spec["healthCheckNodePort"], required: false)
        if healthCheckNodePort != nil && !(type == .loadBalancer && etp == "Local") {
            spec["healthCheckNodePort"].fail("only a LoadBalancer Service with externalTrafficPolicy Local has a health check node port")
        }
        var affinityTimeout: UInt32?
        if affinity == "ClientIP" {
            let t = spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
            let seconds = t.int ?? 10800
            if !(1...86400).contains(seconds) { t.fail("\(seconds) is not between 1 and 86400 seconds") }
            affinityTimeout = UInt32(clamping: seconds)
        }
        guard f.context.errors.count == errorsBefore else { return nil }
        var service = Service(
            meta: meta, type: type, clusterIPs: clusterIPs, isHeadless: headless, selector: selector,
            ports: ports, sessionAffinity: affinity, externalIPs: externalIPs, loadBalancerIPs: lbIPs,
            loadBalancerSourceRanges: ranges)
        service.externalTrafficPolicyLocal = etp == "Local"
        service.internalTrafficPolicyLocal = itp == "Local"
        service.healthCheckNodePort = healthCheckNodePort
        service.affinityTimeout = affinityTimeout
        service.ipFamilies = families
        service.ipFamilyPolicy = familyPolicy
        service.allocateLoadBalancerNodePorts = allocateNodePorts
        return service
    }

    func protocolField(_ f: Field) -> TransportProtocol? {
        let text = f.string ?? "TCP"
        guard let p = TransportProtocol(rawValue: text) else {
            f.fail("\"\(text)\" is not a supported protocol (TCP, UDP, SCTP)")
            return nil
        }
        return p
    }

    func portNumber(_ f: Field, required: Bool) -> UInt16? {
        guard let n = f.int else {
            if required && f.isNull { f.fail("missing") }
            return nil
        }
        guard (1...65535).contains(n) else { f.fail("\(n) is not a port (1-65535)"); return nil }
        return UInt16(n)
    }

    /// A list of IPv4 and IPv6 addresses, none of them special (`Validation.specialAddress`).
    func ipList(_ f: Field, what: String) -> [IPAddress] {
        f.list.compactMap { e in
            guard let s = e.string else { return nil }
            guard let ip = IPAddress(s) else { e.fail("\"\(s)\" is not a valid IP address"); return nil }
            if let why = Validation.specialAddress(ip) { e.fail("\(s) \(why), which cannot be \(what)"); return nil }
            return ip
        }
    }

    /// An endpoint's address: valid, of `family` when given, and not special.
    func ipAddress(_ f: Field, family: IPFamily? = nil) -> IPAddress? {
        guard let s = f.string else { f.fail("missing"); return nil }
        guard let ip = IPAddress(s) else { f.fail("\"\(s)\" is not a valid \(family?.rawValue ?? "IP") address"); return nil }
        if let family, ip.family != family {
            f.fail("\(s) is not an \(family.rawValue) address, as the slice's addressType says"); return nil
        }
        if let why = Validation.specialAddress(ip) { f.fail("\(s) \(why), which cannot be an endpoint"); return nil }
        return ip
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}
