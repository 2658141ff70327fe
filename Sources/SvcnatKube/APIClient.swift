import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import NFTModel
import SvcnatModel
import SvcnatSources

/// A collection svcnat lists and watches.
public struct Resource: Sendable, Hashable {
    /// "services", "endpointslices", "nodes": for messages and keys.
    public var name: String
    public var path: String
    public var kind: String
    public var apiVersion: String
    public var labelSelector: String?
    public var fieldSelector: String?

    /// Services and EndpointSlices, skipping what kube-proxy skips: objects of another service
    /// proxy (`service.kubernetes.io/service-proxy-name`) and headless Services.
    static let skipSelector = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
    public static let services = Resource(
        name: "services", path: "/api/v1/services", kind: "Service", apiVersion: "v1",
        labelSelector: skipSelector)
    public static let endpointSlices = Resource(
        name: "endpointslices", path: "/apis/discovery.k8s.io/v1/endpointslices",
        kind: "EndpointSlice", apiVersion: "discovery.k8s.io/v1", labelSelector: skipSelector)
    public static func node(_ name: String) -> Resource {
        Resource(name: "nodes", path: "/api/v1/nodes", kind: "Node", apiVersion: "v1", fieldSelector: "metadata.name=\(name)")
    }

    /// Whether an object passes the label selector (the server applies it too; this guards
    /// against one that does not).
    public func admits(_ labels: [String: String]) -> Bool {
        guard let labelSelector else { return true }
        for term in labelSelector.split(separator: ",") {
            if term.hasPrefix("!") { if labels[String(term.dropFirst())] != nil { return false } }
        }
        return true
    }
}

public struct APIError: Error, CustomStringConvertible {
    public var status: Int?
    public var description: String
    /// The text goes to logs and /healthz: control characters from the server are escaped.
    public init(status: Int? = nil, _ description: String) {
        self.status = status
        self.description = description.escapingControlCharacters
    }
}

/// What one list may cost, however the server answers: a `continue` token that never ends, or
/// a body that trickles, cannot hold svcnat forever or grow its memory without bound.
public struct ListLimits: Sendable {
    /// 1,000 pages of 500 is 500,000 objects, several times the largest clusters.
    public var maxPages = 1000
    public var maxObjects = 500_000
    /// For each page's whole body, from the request on.
    public var pageDeadline: TimeAmount = .seconds(120)
    /// The longest watch event line (an object is at most 1.5 MB in etcd).
    public var maxWatchLine = 16 << 20
    public init() {}
}

/// Lists and watches over HTTPS with AsyncHTTPClient: TLS verified against the configured
/// CA (unless insecure-skip-tls-verify), bearer token or client certificate.
public final class APIClient: Sendable {
    public let config: APIConfig
    let http: HTTPClient
    public let limits = ListLimits()

    public init(_ config: APIConfig) throws {
        self.config = config
        var tls = TLSConfiguration.makeClientConfiguration()
        do {
            if let ca = config.caPEM { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(ca)) }
            if let c = config.clientCertificatePEM, let k = config.clientKeyPEM {
                tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(c).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: k, format: .pem))
            }
        } catch {
            throw APIError("\(config.origin): a certificate or key is not valid PEM: \(error)")
        }
        if config.insecureSkipTLSVerify { tls.certificateVerification = .none }
        var c = HTTPClient.Configuration(tlsConfiguration: tls)
        c.timeout = .init(connect: .seconds(10))
        // Fail at once with the real error (TLS, refused): the reflector backs off itself.
        c.connectionPool.retryConnectionEstablishment = false
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
    }

    public func shutdown() async { try? await http.shutdown() }

    func request(_ r: Resource, _ query: [(String, String)]) throws -> HTTPClientRequest {
        var q = query
        if let s = r.labelSelector { q.append(("labelSelector", s)) }
        if let s = r.fieldSelector { q.append(("fieldSelector", s)) }
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        let qs = q.map { "\($0)=\($1.addingPercentEncoding(withAllowedCharacters: allowed)!)" }.joined(separator: "&")
        var req = HTTPClientRequest(url: config.server + r.path + (qs.isEmpty ? "" : "?" + qs))
        req.headers.add(name: "Accept", value: "application/json")
        req.headers.add(name: "User-Agent", value: "svcnat")
        if let t = try config.currentToken() { req.headers.add(name: "Authorization", value: "Bearer \(t)") }
        return req
    }

    /// Sends the request; a non-200 answer becomes an APIError that says what to check.
    func send(_ req: HTTPClientRequest, _ r: Resource, deadline: NIODeadline) async throws -> HTTPClientResponse {
        let response: HTTPClientResponse
        do {
            response = try await http.execute(req, deadline: deadline)
        } catch {
            throw APIError(describe(error))
        }
        guard response.status == .ok else {
            let body = (try? await response.body.collect(upTo: 1 << 20)).map { String(buffer: $0) } ?? ""
            let message = (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])?["message"] as? String ?? body
            let code = Int(response.status.code)
            switch code {
            case 401:
                throw APIError(
                    status: code,
                    "the API server at \(config.server) refused svcnat's credentials (401 Unauthorized: \(message)); check the "
                        + "token or client certificate of \(config.origin)"
                )
            case 403:
                throw APIError(
                    status: code,
                    "the API server forbids svcnat to list and watch \(r.name) (403 Forbidden: \(message)); svcnat needs get, list "
                        + "and watch on services, endpointslices and nodes (deploy/rbac.yaml)"
                )
            default:
                throw APIError(status: code, "\(r.name): the API server answered \(code) \(response.status.reasonPhrase): \(message)")
            }
        }
        return response
    }

    func describe(_ error: Error) -> String {
        let text = String(describing: error)
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return
                "TLS with \(config.server) failed: the server's certificate was not accepted (CERTIFICATE_VERIFY_FAILED: not signed "
                + "by the certificate authority of \(config.origin), expired, or not valid for this address)"
        }
        if error is NIOSSLError || text.contains("handshakeFailed") {
            return "TLS with \(config.server) failed: \(text)"
        }
        return "cannot reach the API server at \(config.server): \(text)"
    }

    /// A full list: every object and the list's resourceVersion. Read in pages of `pageSize`
    /// (limit/continue, as client-go's informers list), so neither side holds the whole
    /// collection's JSON at once.
    public func list(_ r: Resource, pageSize: Int = 500) async throws -> APIObjects.List {
        var all = APIObjects.List(resourceVersion: "", objects: [], errors: [])
        let source = "\(config.server)\(r.path)"
        @Sendable func fetch(_ token: String?) async throws -> APIObjects.Page {
            var query = [("limit", String(pageSize))]
            if let token { query.append(("continue", token)) }
            let deadline = NIODeadline.now() + limits.pageDeadline
            let response = try await send(try request(r, query), r, deadline: deadline)
            let body = try await collect(response, upTo: 512 << 20, by: deadline, r)
            do {
                return try APIObjects.page(Array(body.readableBytesView), source: source)
            } catch {
                throw APIError("\(r.name): \(error)")
            }
        }
        var page = try await fetch(nil)
        var pages = 1
        // Every page is of the first page's snapshot.
        all.resourceVersion = page.resourceVersion
        while true {
            // The next page is asked for while this one is decoded (its continue token is
            // known once the page is located).
            let token = page.continueToken
            if token != nil, pages == limits.maxPages {
                throw APIError("\(r.name): the list did not end after \(limits.maxPages) pages; svcnat stops reading it")
            }
            async let next = token == nil ? nil : fetch(token)
            let decoded: APIObjects.List
            do {
                decoded = try APIObjects.objects(of: page, kind: r.kind, apiVersion: r.apiVersion, source: source)
            } catch {
                throw APIError("\(r.name): \(error)")
            }
            all.objects += decoded.objects
            all.errors += decoded.errors
            all.failedKeys += decoded.failedKeys
            guard all.objects.count <= limits.maxObjects else {
                throw APIError("\(r.name): the list passed \(limits.maxObjects) objects; svcnat stops reading it")
            }
            guard let following = try await next else { return all }
            page = following
            pages += 1
        }
    }

    /// A response's whole body, by `deadline`: a body that trickles is cut off there.
    func collect(_ response: HTTPClientResponse, upTo max: Int, by deadline: NIODeadline, _ r: Resource) async throws -> ByteBuffer {
        let seconds = Double(Swift.max(0, (deadline - .now()).nanoseconds)) / 1e9
        do {
            return try await withThrowingTaskGroup(of: ByteBuffer?.self) { group in
                group.addTask { try await response.body.collect(upTo: max) }
                group.addTask {
                    try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let body = first else {
                    throw APIError("\(r.name): the list's body did not arrive within \(Int(seconds)) s")
                }
                return body
            }
        } catch let e as APIError { throw e } catch { throw APIError(describe(error)) }
    }

    /// Watches from `resourceVersion`, with bookmarks, until the server ends the stream
    /// (after `timeoutSeconds`) or the connection drops (then it throws). Events are handed
    /// over one by one, in order.
    public func watch(
        _ r: Resource, from resourceVersion: String, timeoutSeconds: Int,
        _ onEvent: (APIObjects.Event?, [InputError]) throws -> Void
    ) async throws {
        let req = try request(
            r,
            [
                ("watch", "1"), ("resourceVersion", resourceVersion), ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", String(timeoutSeconds))
            ])
        let response = try await send(req, r, deadline: .now() + .seconds(Int64(timeoutSeconds) + 30))
        var pending: [UInt8] = []
        // Where the search for the next newline goes on: each byte is looked at once, however
        // the line is cut into chunks.
        var scanned = 0
        do {
            for try await chunk in response.body {
                pending += chunk.readableBytesView
                while let nl = pending[scanned...].firstIndex(of: UInt8(ascii: "\n")) {
                    let line = Array(pending[..<nl])
                    pending.removeSubrange(...nl)
                    scanned = 0
                    if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
                    let (event, errors) = try APIObjects.event(
                        line, kind: r.kind, apiVersion: r.apiVersion, source: "\(config.server)\(r.path)")
                    try onEvent(event, errors)
                }
                scanned = pending.count
                if pending.count > limits.maxWatchLine {
                    throw APIError("\(r.name): a watch event is longer than \(limits.maxWatchLine >> 20) MB; svcnat drops the stream")
                }
            }
        } catch let e as APIError { throw e } catch let e as APIObjects.DecodeError { throw APIError("\(r.name): \(e)") } catch let e
            as WatchGone
        { throw e } catch { throw APIError("\(r.name): the watch stream broke: \(describe(error))") }
    }
}

/// The watch's resourceVersion is too old (410 Gone): list again.
public struct WatchGone: Error {}
