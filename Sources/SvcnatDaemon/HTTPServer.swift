import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 server on SwiftNIO for /metrics, /healthz and /livez, fit for a port any
/// host on the network can reach: GET and HEAD only; at most `maxConnections` open per
/// listener and `maxPerSource` from one address; and a connection that does not complete a
/// request within `requestTimeout` (a slow sender, or an idle keep-alive) is closed. So no
/// client can take the node's file descriptors, nor the health checks from other clients.
final class HTTPServer: @unchecked Sendable {
    /// One request: its path, and whether it came from the node itself (loopback).
    struct Request: Sendable {
        var path: String
        var fromLoopback: Bool
    }
    typealias Handler = @Sendable (_ request: Request) -> (status: HTTPResponseStatus, contentType: String, body: String)

    static let maxConnections = 256
    static let maxPerSource = 16
    static let requestTimeout: TimeAmount = .seconds(10)

    private let group: EventLoopGroup
    private var channels: [Channel] = []
    private var byAddress: [String: Channel] = [:]

    init(group: EventLoopGroup) { self.group = group }

    /// Listens on "host:port" ("[v6]:port" too) until `close(address)` or `close()`.
    func listen(_ address: String, handler: @escaping Handler) throws {
        let channel = try bind(address, handler: handler)
        channels.append(channel)
        byAddress[address] = channel
    }

    func close(_ address: String) {
        guard let c = byAddress.removeValue(forKey: address) else { return }
        try? c.close().wait()
        channels.removeAll { $0 === c }
    }

    var addresses: Set<String> { Set(byAddress.keys) }

    private func bind(_ address: String, handler: @escaping Handler) throws -> Channel {
        let (host, port) = try Self.split(address)
        let open = ConnectionCount(limit: Self.maxConnections, perSource: Self.maxPerSource)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .childChannelInitializer { channel in
                let source = channel.remoteAddress?.ipAddress ?? "?"
                guard open.enter(source) else {
                    // Over a cap: refuse at once rather than hold a descriptor.
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in open.leave(source) }
                return channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(RequestHandler(handler: handler))
                }
            }
        return try bootstrap.bind(host: host, port: port).wait()
    }

    func close() {
        for c in channels { try? c.close().wait() }
        channels = []
        byAddress = [:]
    }

    static func split(_ address: String) throws -> (String, Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw HTTPServerError(message: "\"\(address)\" is not HOST:PORT")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host.isEmpty ? "0.0.0.0" : host, port)
    }
}

struct HTTPServerError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// Open connections of one listener, in all and per source address, against the caps.
private final class ConnectionCount: @unchecked Sendable {
    private let lock = NSLock()
    private var open = 0
    private var bySource: [String: Int] = [:]
    let limit: Int, perSource: Int
    init(limit: Int, perSource: Int) {
        self.limit = limit
        self.perSource = perSource
    }
    func enter(_ source: String) -> Bool {
        lock.withLock {
            guard open < limit, bySource[source, default: 0] < perSource else { return false }
            open += 1
            bySource[source, default: 0] += 1
            return true
        }
    }
    func leave(_ source: String) {
        lock.withLock {
            open -= 1
            bySource[source, default: 1] -= 1
            if bySource[source] == 0 { bySource[source] = nil }
        }
    }
}

private final class RequestHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let handler: HTTPServer.Handler
    private var path = "/"
    private var method = HTTPMethod.GET
    private var keepAlive = false
    /// Closes the connection unless a request completes in time.
    private var deadline: Scheduled<Void>?

    init(handler: @escaping HTTPServer.Handler) { self.handler = handler }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        context.fireChannelInactive()
    }

    private func arm(_ context: ChannelHandlerContext) {
        deadline?.cancel()
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: HTTPServer.requestTimeout) { channel.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "/")
            method = head.method
            keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            deadline?.cancel()
            var headers = HTTPHeaders()
            let status: HTTPResponseStatus, type: String, body: String
            if method == .GET || method == .HEAD {
                let fromLoopback = context.remoteAddress.map(Self.isLoopback) ?? false
                (status, type, body) = handler(HTTPServer.Request(path: path, fromLoopback: fromLoopback))
            } else {
                (status, type, body) = (.methodNotAllowed, "text/plain", "only GET and HEAD\n")
                headers.add(name: "Allow", value: "GET, HEAD")
            }
            headers.add(name: "Content-Type", value: type)
            headers.add(name: "X-Content-Type-Options", value: "nosniff")
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            if method != .HEAD {
                var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
                buffer.writeString(body)
                context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            }
            let keep = keepAlive
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keep { context.close(promise: nil) }
            }
            if keep { arm(context) }
        }
    }

    static func isLoopback(_ a: SocketAddress) -> Bool {
        guard let ip = a.ipAddress else { return false }
        return ip.hasPrefix("127.") || ip == "::1" || ip.hasPrefix("::ffff:127.")
    }
}
