import NFTModel
import SvcnatModel
import Yams

/// EndpointSlices, Endpoints, Pods and Ingresses: the objects that give a Service its endpoints
/// and its routes.
extension ManifestDecoder {
    // MARK: EndpointSlice and Endpoints

    mutating func endpointSlice(_ f: Field, _ meta: ObjectMeta) -> EndpointSlice? {
        let addressType = f["addressType"].string ?? ""
        guard let family = IPFamily(rawValue: addressType) else {
            if addressType == "FQDN" {
                warn(f["addressType"], "addressType \(addressType) is not programmed; skipped")
            } else {
                f["addressType"].fail(addressType.isEmpty ? "missing" : "\"\(addressType)\" is not IPv4, IPv6 or FQDN")
            }
            return nil
        }
        guard let service = meta.labels["kubernetes.io/service-name"], !service.isEmpty else {
            warn(f["metadata"]["labels"], "no kubernetes.io/service-name label, so it belongs to no Service; skipped")
            return nil
        }
        let before = f.context.errors.count
        let list = f["endpoints"].list
        var endpoints: [SliceEndpoint] = []
        endpoints.reserveCapacity(list.count)  // kept as long as the slice: no room to spare
        for e in list {
            let addrs = e["addresses"].list
            if addrs.isEmpty { e["addresses"].fail("an endpoint needs at least one address") }
            // Each address is checked; the first is the endpoint's (see SliceEndpoint.address).
            let ips = addrs.compactMap { ipAddress($0, family: family) }
            guard let first = ips.first else { continue }
            let c = e["conditions"]
            let ready = c["ready"].bool ?? true
            let conditions = EndpointConditions(ready: ready, serving: c["serving"].bool, terminating: c["terminating"].bool ?? false)
            let zones = e["hints"]["forZones"].isPresent ? e["hints"]["forZones"].list.compactMap { $0["name"].string } : nil
            endpoints.append(SliceEndpoint(address: first, conditions: conditions, nodeName: e["nodeName"].string, zoneHints: zones))
        }
        var ports: [EndpointPort] = []
        for p in f["ports"].list {
            let proto = protocolField(p["protocol"])
            guard let port = portNumber(p["port"], required: false), let proto else { continue }
            ports.append(EndpointPort(name: p["name"].string ?? "", proto: proto, port: port))
        }
        guard f.context.errors.count == before else { return nil }
        return EndpointSlice(meta: meta, serviceName: service, endpoints: endpoints, ports: ports)
    }

    func endpoints(_ f: Field, _ meta: ObjectMeta) -> Endpoints? {
        let before = f.context.errors.count
        var subsets: [Endpoints.Subset] = []
        for s in f["subsets"].list {
            let ready = s["addresses"].list.compactMap { ipAddress($0["ip"]) }
            let notReady = s["notReadyAddresses"].list.compactMap { ipAddress($0["ip"]) }
            var ports: [EndpointPort] = []
            for p in s["ports"].list {
                let proto = protocolField(p["protocol"])
                guard let port = portNumber(p["port"], required: true), let proto else { continue }
                ports.append(EndpointPort(name: p["name"].string ?? "", proto: proto, port: port))
            }
            subsets.append(.init(addresses: ready, notReadyAddresses: notReady, ports: ports))
        }
        guard f.context.errors.count == before else { return nil }
        return Endpoints(meta: meta, subsets: subsets)
    }

    // MARK: Pod

    /// A Pod's endpoint-relevant parts. Pods written by hand for svcnat often carry only
    /// `status.podIP`: without a phase such a pod counts as Running, and without conditions as
    /// Ready.
    func pod(_ f: Field, _ meta: ObjectMeta) -> Pod? {
        let before = f.context.errors.count
        var ports: [ContainerPort] = []
        for c in f["spec"]["containers"].list {
            for p in c["ports"].list {
                let proto = protocolField(p["protocol"])
                guard let port = portNumber(p["containerPort"], required: true), let proto else { continue }
                let name = p["name"].string ?? ""
                if !name.isEmpty, let why = Validation.ianaServiceName(name) {
                    p["name"].fail("\"\(name)\" is not a valid port name: \(why)")
                }
                ports.append(ContainerPort(name: name, containerPort: port, proto: proto))
            }
        }
        let status = f["status"]
        // `status.podIPs` (one per family) when present, else `status.podIP`.
        var ips: [IPAddress] = []
        let ipFields = status["podIPs"].list.isEmpty ? [status["podIP"]] : status["podIPs"].list.map { $0["ip"] }
        for field in ipFields {
            guard let s = field.string, !s.isEmpty else { continue }
            if let a = IPAddress(s) { ips.append(a) } else { field.fail("\"\(s)\" is not a valid IP address") }
        }
        let phase = status["phase"].string ?? (!ips.isEmpty ? "Running" : "Pending")
        var ready = true
        let conditions = status["conditions"].list
        if !conditions.isEmpty {
            ready = conditions.contains { $0["type"].string == "Ready" && $0["status"].string == "True" }
        }
        let terminating = f["metadata"]["deletionTimestamp"].isPresent
        guard f.context.errors.count == before else { return nil }
        return Pod(
            meta: meta, podIPs: ips, phase: phase, ready: ready, terminating: terminating,
            nodeName: f["spec"]["nodeName"].string, containerPorts: ports)
    }

    // MARK: Ingress

    mutating func ingress(_ f: Field, _ meta: ObjectMeta, beta: Bool) -> Ingress? {
        let before = f.context.errors.count
        var resourceBackends: [Field] = []
        func backend(_ b: Field) -> Ingress.Backend? {
            guard b.isPresent else { return nil }
            // A backend that is a resource (an object of another API, such as a storage
            // bucket) is the ingress controller's business: svcnat routes only to Services.
            if b["resource"].isPresent {
                resourceBackends.append(b)
                return nil
            }
            if beta {
                guard let name = b["serviceName"].string else { b["serviceName"].fail("missing"); return nil }
                guard let port = b["servicePort"].intOrString else { b["servicePort"].fail("missing"); return nil }
                return .init(service: name, port: port)
            }
            let s = b["service"]
            guard let name = s["name"].string else { s["name"].fail("missing"); return nil }
            if let n = s["port"]["number"].int { return .init(service: name, port: .int(n)) }
            if let n = s["port"]["name"].string { return .init(service: name, port: .string(n)) }
            s["port"].fail("needs a number or a name")
            return nil
        }
        var paths: [Ingress.Path] = []
        for r in f["spec"]["rules"].list {
            let host = r["host"].string
            for p in r["http"]["paths"].list {
                guard let b = backend(p["backend"]) else { continue }
                paths.append(
                    .init(host: host, path: p["path"].string ?? "/", pathType: p["pathType"].string ?? "ImplementationSpecific", backend: b)
                )
            }
        }
        let def = backend(f["spec"][beta ? "backend" : "defaultBackend"])
        for b in resourceBackends {
            let r = b["resource"]
            let what = [r["kind"].string, r["name"].string].compactMap { $0 }.joined(separator: " ")
            warn(
                b,
                "\(b.path): a resource backend (\(what.isEmpty ? "not a Service" : what)) is not a Service, and svcnat routes only to Services; skipped"
            )
        }
        guard f.context.errors.count == before else { return nil }
        return Ingress(meta: meta, paths: paths, defaultBackend: def)
    }
}
