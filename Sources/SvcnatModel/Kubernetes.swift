import NFTModel

/// The parts of Kubernetes objects svcnat reads, as plain values. Decoding and validation of
/// manifests live in SvcnatSources; these types hold only checked data.

public struct ObjectMeta: Hashable, Sendable {
    public var namespace: String
    public var name: String
    public var labels: [String: String]
    /// RFC 3339, as the API server writes it (`2026-11-27T09:00:00Z`); nil in most manifests.
    /// The older of two Services claiming one frontend keeps it.
    public var creationTimestamp: String?
    /// An EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time`, in seconds since
    /// 1970: when the change it carries began (a Pod or Service edit), for kube-proxy's
    /// network programming latency.
    public var lastChangeTriggerTime: Double?
    public static let triggerTimeAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"
    public init(
        namespace: String, name: String, labels: [String: String] = [:], creationTimestamp: String? = nil,
        lastChangeTriggerTime: Double? = nil
    ) {
        self.namespace = namespace
        self.name = name
        self.labels = labels
        self.creationTimestamp = creationTimestamp
        self.lastChangeTriggerTime = lastChangeTriggerTime
    }
    public var key: String { "\(namespace)/\(name)" }

    /// Seconds since 1970 of an RFC 3339 time as the API server writes it
    /// (`2026-12-03T05:14:08Z`, `2026-12-03T05:14:08.123456789Z`, or with a `+hh:mm` offset);
    /// nil for anything else.
    public static func seconds(rfc3339 text: String) -> Double? {
        let u = Array(text.utf8)
        func digits(_ at: Int, _ n: Int) -> Int? {
            guard at + n <= u.count else { return nil }
            var v = 0
            for c in u[at..<(at + n)] {
                guard c >= 48, c <= 57 else { return nil }
                v = v * 10 + Int(c - 48)
            }
            return v
        }
        guard u.count >= 20, u[4] == 45, u[7] == 45, u[10] == 84 || u[10] == 116, u[13] == 58, u[16] == 58,
            let y = digits(0, 4), let mo = digits(5, 2), let d = digits(8, 2), let h = digits(11, 2), let mi = digits(14, 2),
            let s = digits(17, 2), (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, s < 61
        else { return nil }
        var k = 19
        var fraction = 0.0
        if u[k] == 46 {
            var scale = 0.1
            k += 1
            while k < u.count, u[k] >= 48, u[k] <= 57 {
                fraction += Double(u[k] - 48) * scale
                scale /= 10
                k += 1
            }
        }
        guard k < u.count else { return nil }
        var offset = 0
        if u[k] == 90 || u[k] == 122 {
            guard k + 1 == u.count else { return nil }
        } else if u[k] == 43 || u[k] == 45, k + 6 == u.count, u[k + 3] == 58, let oh = digits(k + 1, 2), let om = digits(k + 4, 2) {
            offset = (oh * 3600 + om * 60) * (u[k] == 43 ? 1 : -1)
        } else {
            return nil
        }
        // Days from 1970-01-01 of the civil date (the proleptic Gregorian calendar).
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146097 + doe - 719468
        return Double(days * 86400 + h * 3600 + mi * 60 + s - offset) + fraction
    }
}

public enum IntOrString: Hashable, Sendable, CustomStringConvertible {
    case int(Int)
    case string(String)
    public var description: String {
        switch self {
        case .int(let i): String(i)
        case .string(let s): s
        }
    }
}

public enum ServiceType: String, Hashable, Sendable {
    case clusterIP = "ClusterIP", nodePort = "NodePort", loadBalancer = "LoadBalancer", externalName = "ExternalName"
}

public struct ServicePort: Hashable, Sendable {
    public var name: String
    public var proto: TransportProtocol
    public var port: UInt16
    public var targetPort: IntOrString
    public var nodePort: UInt16?
    /// Whether `nodePort` was allocated by svcnat (`--allocate`), not given.
    public var nodePortAllocated = false
    public init(
        name: String = "", proto: TransportProtocol = .tcp, port: UInt16, targetPort: IntOrString? = nil,
        nodePort: UInt16? = nil
    ) {
        self.name = name
        self.proto = proto
        self.port = port
        self.targetPort = targetPort ?? .int(Int(port))
        self.nodePort = nodePort
    }
}

public struct Service: Hashable, Sendable {
    public var meta: ObjectMeta
    public var type: ServiceType
    /// The cluster IPs, at most one per family, the primary first (`spec.clusterIPs`); empty
    /// for headless Services (clusterIP None) and ExternalName.
    public var clusterIPs: [IPAddress]
    public var clusterIP: IPAddress? { clusterIPs.first }
    public func clusterIP(_ family: IPFamily) -> IPAddress? { clusterIPs.first { $0.family == family } }
    public var isHeadless: Bool
    public var selector: [String: String]?
    public var ports: [ServicePort]
    public var sessionAffinity: String
    /// `spec.externalIPs`.
    public var externalIPs: [IPAddress]
    /// `status.loadBalancer.ingress[].ip`.
    public var loadBalancerIPs: [IPAddress]
    /// `spec.loadBalancerSourceRanges`: only these sources may use the load-balancer IPs.
    public var loadBalancerSourceRanges: [IPPrefix]
    /// `spec.externalTrafficPolicy: Local`: external traffic only to this node's endpoints,
    /// client source kept.
    public var externalTrafficPolicyLocal = false
    /// `spec.internalTrafficPolicy: Local`: ClusterIP traffic only to this node's endpoints.
    public var internalTrafficPolicyLocal = false
    public var healthCheckNodePort: UInt16?
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` (10800 by default) when sessionAffinity
    /// is ClientIP.
    public var affinityTimeout: UInt32?
    /// `spec.ipFamilies` and `spec.ipFamilyPolicy` (SingleStack when not given): the families
    /// an allocated Service gets addresses of.
    public var ipFamilies: [IPFamily] = []
    public var ipFamilyPolicy = "SingleStack"
    /// `spec.allocateLoadBalancerNodePorts` (true when not given): a LoadBalancer Service
    /// without it has node ports only where given.
    public var allocateLoadBalancerNodePorts = true
    /// Whether the cluster IPs and the health check node port were allocated by svcnat
    /// (`--allocate`), not given.
    public var clusterIPsAllocated = false
    public var healthCheckNodePortAllocated = false

    /// The Service has no cluster IP of its own although it should: not headless, not
    /// ExternalName.
    public var lacksClusterIP: Bool { clusterIPs.isEmpty && !isHeadless && type != .externalName }
    /// Whether its ports get node ports (NodePort, and LoadBalancer unless it declines them).
    public var wantsNodePorts: Bool { type == .nodePort || type == .loadBalancer && allocateLoadBalancerNodePorts }

    public init(
        meta: ObjectMeta, type: ServiceType = .clusterIP, clusterIP: IPAddress?, isHeadless: Bool = false,
        selector: [String: String]? = nil, ports: [ServicePort], sessionAffinity: String = "None",
        externalIPs: [IPAddress] = [], loadBalancerIPs: [IPAddress] = [], loadBalancerSourceRanges: [IPPrefix] = []
    ) {
        self.init(
            meta: meta, type: type, clusterIPs: clusterIP.map { [$0] } ?? [], isHeadless: isHeadless, selector: selector,
            ports: ports, sessionAffinity: sessionAffinity, externalIPs: externalIPs, loadBalancerIPs: loadBalancerIPs,
            loadBalancerSourceRanges: loadBalancerSourceRanges)
    }

    public init(
        meta: ObjectMeta, type: ServiceType = .clusterIP, clusterIPs: [IPAddress], isHeadless: Bool = false,
        selector: [String: String]? = nil, ports: [ServicePort], sessionAffinity: String = "None",
        externalIPs: [IPAddress] = [], loadBalancerIPs: [IPAddress] = [], loadBalancerSourceRanges: [IPPrefix] = []
    ) {
        self.meta = meta
        self.type = type
        self.clusterIPs = clusterIPs
        self.isHeadless = isHeadless
        self.selector = selector
        self.ports = ports
        self.sessionAffinity = sessionAffinity
        self.externalIPs = externalIPs
        self.loadBalancerIPs = loadBalancerIPs
        self.loadBalancerSourceRanges = loadBalancerSourceRanges
    }
}

public struct EndpointConditions: Hashable, Sendable {
    public var ready: Bool
    public var serving: Bool
    public var terminating: Bool
    public init(ready: Bool = true, serving: Bool? = nil, terminating: Bool = false) {
        self.ready = ready
        self.serving = serving ?? ready
        self.terminating = terminating
    }
}

public struct SliceEndpoint: Hashable, Sendable {
    /// `addresses[0]`. The API defines no meaning for the others (the EndpointSlice controller
    /// writes exactly one) and kube-proxy reads only the first, so the decoder checks the
    /// others and keeps this one, inline (an array per endpoint cost 4 MB at 100,000).
    public var address: IPAddress
    public var conditions: EndpointConditions
    public var nodeName: String?
    /// `hints.forZones[].name`: the zones this endpoint is meant to serve (topology hints).
    public var zoneHints: [String]?
    public init(address: IPAddress, conditions: EndpointConditions = .init(), nodeName: String? = nil, zoneHints: [String]? = nil) {
        self.address = address
        self.conditions = conditions
        self.nodeName = nodeName
        self.zoneHints = zoneHints
    }
}

public struct EndpointPort: Hashable, Sendable {
    public var name: String
    public var proto: TransportProtocol
    public var port: UInt16
    public init(name: String = "", proto: TransportProtocol = .tcp, port: UInt16) {
        self.name = name
        self.proto = proto
        self.port = port
    }
}

/// discovery.k8s.io/v1 EndpointSlice (IPv4 and IPv6 slices; FQDN ones are skipped when decoding).
public struct EndpointSlice: Hashable, Sendable {
    public var meta: ObjectMeta
    /// From the `kubernetes.io/service-name` label.
    public var serviceName: String
    public var endpoints: [SliceEndpoint]
    public var ports: [EndpointPort]
    public init(meta: ObjectMeta, serviceName: String, endpoints: [SliceEndpoint], ports: [EndpointPort]) {
        self.meta = meta
        self.serviceName = serviceName
        self.endpoints = endpoints
        self.ports = ports
    }
}

/// v1 Endpoints: each subset's ready and not-ready addresses with its ports.
public struct Endpoints: Hashable, Sendable {
    public struct Subset: Hashable, Sendable {
        public var addresses: [IPAddress]
        public var notReadyAddresses: [IPAddress]
        public var ports: [EndpointPort]
        public init(addresses: [IPAddress], notReadyAddresses: [IPAddress] = [], ports: [EndpointPort]) {
            self.addresses = addresses
            self.notReadyAddresses = notReadyAddresses
            self.ports = ports
        }
    }
    public var meta: ObjectMeta
    public var subsets: [Subset]
    public init(meta: ObjectMeta, subsets: [Subset]) {
        self.meta = meta
        self.subsets = subsets
    }
}

public struct ContainerPort: Hashable, Sendable {
    public var name: String
    public var containerPort: UInt16
    public var proto: TransportProtocol
    public init(name: String = "", containerPort: UInt16, proto: TransportProtocol = .tcp) {
        self.name = name
        self.containerPort = containerPort
        self.proto = proto
    }
}

public struct Pod: Hashable, Sendable {
    public var meta: ObjectMeta
    /// `status.podIPs`: at most one per family, the primary first.
    public var podIPs: [IPAddress]
    public var podIP: IPAddress? { podIPs.first }
    public var phase: String
    public var ready: Bool
    public var terminating: Bool
    public var nodeName: String?
    public var containerPorts: [ContainerPort]
    public init(
        meta: ObjectMeta, podIP: IPAddress?, phase: String = "Running", ready: Bool = true,
        terminating: Bool = false, nodeName: String? = nil, containerPorts: [ContainerPort] = []
    ) {
        self.init(
            meta: meta, podIPs: podIP.map { [$0] } ?? [], phase: phase, ready: ready, terminating: terminating,
            nodeName: nodeName, containerPorts: containerPorts)
    }

    public init(
        meta: ObjectMeta, podIPs: [IPAddress], phase: String = "Running", ready: Bool = true,
        terminating: Bool = false, nodeName: String? = nil, containerPorts: [ContainerPort] = []
    ) {
        self.meta = meta
        self.podIPs = podIPs
        self.phase = phase
        self.ready = ready
        self.terminating = terminating
        self.nodeName = nodeName
        self.containerPorts = containerPorts
    }
}

public struct Ingress: Hashable, Sendable {
    public struct Backend: Hashable, Sendable {
        public var service: String
        public var port: IntOrString
        public init(service: String, port: IntOrString) {
            self.service = service
            self.port = port
        }
    }
    public struct Path: Hashable, Sendable {
        public var host: String?
        public var path: String
        public var pathType: String
        public var backend: Backend
        public init(host: String?, path: String, pathType: String, backend: Backend) {
            self.host = host
            self.path = path
            self.pathType = pathType
            self.backend = backend
        }
    }
    public var meta: ObjectMeta
    public var paths: [Path]
    public var defaultBackend: Backend?
    public init(meta: ObjectMeta, paths: [Path], defaultBackend: Backend? = nil) {
        self.meta = meta
        self.paths = paths
        self.defaultBackend = defaultBackend
    }
}

/// Everything svcnat was told about the cluster.
public struct ClusterState: Hashable, Sendable {
    public var services: [Service] = []
    public var endpointSlices: [EndpointSlice] = []
    public var endpoints: [Endpoints] = []
    public var pods: [Pod] = []
    public var ingresses: [Ingress] = []
    public init(
        services: [Service] = [], endpointSlices: [EndpointSlice] = [], endpoints: [Endpoints] = [],
        pods: [Pod] = [], ingresses: [Ingress] = []
    ) {
        self.services = services
        self.endpointSlices = endpointSlices
        self.endpoints = endpoints
        self.pods = pods
        self.ingresses = ingresses
    }
}

extension ClusterState {
    /// This state without the Services (namespace/name) in `keys`.
    public func without(services keys: Set<String>) -> ClusterState {
        var s = self
        s.services.removeAll { keys.contains($0.meta.key) }
        return s
    }
}
