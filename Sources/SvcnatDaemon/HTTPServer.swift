import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 server on SwiftNIO for /metrics, /healthz and /livez.
final class HTTPServer: @unchecked Sendable {
    typealias Handler = @Sendable (_ path: String) -> (status: HTTPResponseStatus, contentType: String, body: String)

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
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
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

private final class RequestHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let handler: HTTPServer.Handler
    private var path = "/"
    private var keepAlive = false

    init(handler: @escaping HTTPServer.Handler) { self.handler = handler }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "/")
            keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            let (status, type, body) = handler(path)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: type)
            headers.add(name: "X-Content-Type-Options", value: "nosniff")
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
            buffer.writeString(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            let keep = keepAlive
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keep { context.close(promise: nil) }
            }
        }
    }
}
