/// The fields each kind svcnat reads may have, as the API defines them, so a misspelt field
/// (`selectr:`, `targetport:`) is named as kubectl names it (`unknown field "spec.selectr"`)
/// instead of being ignored. Only the parts svcnat reads are spelled out; the rest of an
/// object (a Pod's volumes, a Service's status) is taken as it is.
indirect enum Schema: Sendable {
    /// Anything: free-form, or not svcnat's concern.
    case any
    case object(KeyTable<Schema>)
    /// A list whose items are all of this shape.
    case list(Schema)

    static func fields(_ names: [String], _ inner: [String: Schema] = [:]) -> Schema {
        var m = inner
        for n in names where m[n] == nil { m[n] = .any }
        return .object(KeyTable(m))
    }

    static let meta = fields([
        "name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp",
        "deletionTimestamp", "deletionGracePeriodSeconds", "finalizers", "generateName", "ownerReferences", "managedFields",
        "selfLink"
    ])

    static func top(_ names: [String], _ inner: [String: Schema]) -> Schema {
        var m = inner
        m["metadata"] = meta
        return fields(["apiVersion", "kind"] + names, m)
    }

    static let service = top(
        ["status"],
        [
            "spec": fields(
                [
                    "allocateLoadBalancerNodePorts", "clusterIP", "clusterIPs", "externalIPs", "externalName", "externalTrafficPolicy",
                    "healthCheckNodePort", "internalTrafficPolicy", "ipFamilies", "ipFamilyPolicy", "loadBalancerClass",
                    "loadBalancerIP", "loadBalancerSourceRanges", "publishNotReadyAddresses", "selector", "sessionAffinity",
                    "trafficDistribution", "type"
                ],
                [
                    "ports": .list(fields(["appProtocol", "name", "nodePort", "port", "protocol", "targetPort"])),
                    "sessionAffinityConfig": fields([], ["clientIP": fields(["timeoutSeconds"])])
                ])
        ])

    static let endpointPort = fields(["appProtocol", "name", "port", "protocol"])

    static let endpointSlice = top(
        ["addressType"],
        [
            "endpoints": .list(
                fields(
                    ["addresses", "deprecatedTopology", "hostname", "nodeName", "targetRef", "zone"],
                    [
                        "conditions": fields(["ready", "serving", "terminating"]),
                        "hints": fields(["forZones", "forNodes"])
                    ])),
            "ports": .list(endpointPort)
        ])

    static let endpointAddress = fields(["ip", "hostname", "nodeName", "targetRef"])
    static let endpoints = top(
        [],
        [
            "subsets": .list(
                fields(
                    [],
                    ["addresses": .list(endpointAddress), "notReadyAddresses": .list(endpointAddress), "ports": .list(endpointPort)]))
        ])

    static let container = fields(
        [
            "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "name", "readinessProbe",
            "resizePolicy", "resources", "restartPolicy", "securityContext", "startupProbe", "stdin", "stdinOnce",
            "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices", "volumeMounts", "workingDir"
        ],
        ["ports": .list(fields(["containerPort", "hostIP", "hostPort", "name", "protocol"]))])

    static let pod = top(
        ["status"],
        [
            "spec": fields(
                [
                    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "dnsConfig", "dnsPolicy", "enableServiceLinks",
                    "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname",
                    "imagePullSecrets", "nodeName", "nodeSelector", "os", "overhead", "preemptionPolicy", "priority",
                    "priorityClassName", "readinessGates", "resourceClaims", "resources", "restartPolicy", "runtimeClassName",
                    "schedulerName", "schedulingGates", "securityContext", "serviceAccount", "serviceAccountName",
                    "setHostnameAsFQDN", "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds", "tolerations",
                    "topologySpreadConstraints", "volumes"
                ],
                ["containers": .list(container), "initContainers": .list(container)])
        ])

    static func ingress(beta: Bool) -> Schema {
        let backend =
            beta
            ? fields(["serviceName", "servicePort", "resource"])
            : fields(["resource"], ["service": fields(["name"], ["port": fields(["name", "number"])])])
        let rule = fields(
            ["host"],
            ["http": fields([], ["paths": .list(fields(["path", "pathType"], ["backend": backend]))])])
        return top(
            ["status"],
            ["spec": fields(["ingressClassName", "tls"], [beta ? "backend" : "defaultBackend": backend, "rules": .list(rule)])])
    }
    static let ingressV1 = ingress(beta: false)
    static let ingressBeta = ingress(beta: true)

    static func of(kind: String, apiVersion: String) -> Schema {
        switch kind {
        case "Service": service
        case "EndpointSlice": endpointSlice
        case "Endpoints": endpoints
        case "Pod": pod
        case "Ingress": apiVersion.hasSuffix("v1beta1") ? ingressBeta : ingressV1
        default: .any
        }
    }

    /// The paths of `value`'s fields that this schema does not know, in document order.
    func unknownFields(of value: Value) -> [FieldPath] {
        var out: [FieldPath] = []
        collectUnknown(value, .root, &out)
        return out
    }

    /// Walks without building anything for a known field (100,000 endpoints are checked in a
    /// 10,000-Service list): the path is made only for an unknown one.
    private func collectUnknown(_ value: Value, _ path: @autoclosure () -> FieldPath, _ out: inout [FieldPath]) {
        switch (self, value) {
        case (.object(let known), .mapping(let members)):
            for (k, v) in members {
                guard let inner = known[k] else {
                    out.append(.key(path(), k))
                    continue
                }
                if case .any = inner { continue }
                inner.collectUnknown(v, .key(path(), k), &out)
            }
        case (.list(let item), .sequence(let items)):
            if case .any = item { return }
            for (i, v) in items.enumerated() { item.collectUnknown(v, .index(path(), i), &out) }
        default:
            return
        }
    }
}

/// Kinds that are not svcnat's, for what is said about them: those known to be cluster-scoped
/// are named without a namespace, and a kind close to one svcnat reads is pointed out unless it
/// is one of these well-known kinds itself.
public enum Kinds {
    static let clusterScoped: Set<String> = [
        "Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "StorageClass",
        "IngressClass", "PriorityClass", "RuntimeClass", "CSIDriver", "CSINode", "VolumeAttachment",
        "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding", "APIService", "CertificateSigningRequest", "FlowSchema",
        "PriorityLevelConfiguration", "PodSecurityPolicy", "ComponentStatus", "GatewayClass", "ClusterIssuer"
    ]
    static let wellKnown: Set<String> = clusterScoped.union([
        "ConfigMap", "Secret", "ServiceAccount", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController",
        "Job", "CronJob", "Role", "RoleBinding", "PersistentVolumeClaim", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "NetworkPolicy", "LimitRange", "ResourceQuota", "Lease", "Event", "ControllerRevision", "PodTemplate", "Gateway",
        "HTTPRoute", "GRPCRoute", "Certificate", "Issuer", "ServiceMonitor", "PodMonitor"
    ])

    /// The kind svcnat reads that `kind` looks like a slip for, if any.
    public static func suggestion(for kind: String, among known: some Sequence<String>) -> String? {
        guard !wellKnown.contains(kind) else { return nil }
        let lower = kind.lowercased()
        for k in known.sorted() {
            let d = distance(Array(lower.utf8), Array(k.lowercased().utf8))
            if d <= (k.count >= 6 ? 2 : 1) { return k }
        }
        return nil
    }

    /// Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`.
    static func distance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in 0...a.count { d[i][0] = i }
        for j in 0...b.count { d[0][j] = j }
        for i in 1...a.count {
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] { d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1) }
            }
        }
        return d[a.count][b.count]
    }
}

/// A few dozen string keys, looked up by length and first and last byte in an open-addressed
/// table, then compared once: the schema check looks up every key of every object, and hashing
/// each (as a Dictionary does) cost a tenth of decoding a 10,000-Service List.
struct KeyTable<V: Sendable>: Sendable {
    private let slots: [(key: String, value: V)?]
    private let mask: Int

    init(_ entries: [String: V]) {
        var size = 16
        while size < 4 * entries.count { size *= 2 }
        var slots = [(key: String, value: V)?](repeating: nil, count: size)
        for (k, v) in entries.sorted(by: { $0.key < $1.key }) {
            var at = Self.slot(k, size - 1)
            while slots[at] != nil { at = (at + 1) & (size - 1) }
            slots[at] = (k, v)
        }
        self.slots = slots
        mask = size - 1
    }

    private static func slot(_ key: String, _ mask: Int) -> Int {
        let utf8 = key.utf8
        let first = Int(utf8.first ?? 0)
        let last = Int(utf8.last ?? 0)
        return (utf8.count &* 131 &+ first &* 31 &+ last) & mask
    }

    subscript(_ key: String) -> V? {
        var at = Self.slot(key, mask)
        while let entry = slots[at] {
            if entry.key == key { return entry.value }
            at = (at + 1) & mask
        }
        return nil
    }
}
