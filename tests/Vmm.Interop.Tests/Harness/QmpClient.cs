using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Vmm.Interop.Tests.Harness;

/// <summary>
/// A QEMU Machine Protocol client on a Unix socket (QEMU started with
/// <c>-qmp unix:PATH,server=on,wait=off</c>): one JSON object per line, events skipped.
/// </summary>
public sealed class QmpClient : IDisposable
{
    static readonly TimeSpan ReplyTimeout = TimeSpan.FromSeconds(60);
    readonly Socket _socket;
    readonly StreamReader _reader;
    readonly StreamWriter _writer;

    QmpClient(Socket socket)
    {
        _socket = socket;
        var stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(stream, Encoding.UTF8);
        _writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
    }

    /// <summary>Connects (waiting for the socket to appear) and leaves capabilities negotiation mode.</summary>
    public static async Task<QmpClient> ConnectAsync(string path, TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
                var client = new QmpClient(socket);
                await client.ReadObjectAsync(); // the greeting
                await client.ExecuteAsync("qmp_capabilities");
                return client;
            }
            catch (SocketException) when (DateTime.UtcNow < until)
            {
                socket.Dispose();
                await Task.Delay(100);
            }
        }
    }

    /// <summary>Runs a command; returns its "return" value, or throws with QEMU's error description.</summary>
    public async Task<JsonNode?> ExecuteAsync(string command, object? arguments = null)
    {
        var request = new JsonObject { ["execute"] = command };
        if (arguments is not null)
            request["arguments"] = JsonSerializer.SerializeToNode(arguments);
        await _writer.WriteLineAsync(request.ToJsonString());
        while (true)
        {
            var reply = await ReadObjectAsync();
            if (reply["return"] is { } result)
                return result;
            if (reply["error"] is { } error)
                throw new QmpException(command, error["desc"]?.GetValue<string>() ?? error.ToJsonString());
            if (reply.ContainsKey("return"))
                return null;
        }
    }

    async Task<JsonObject> ReadObjectAsync()
    {
        var line = await _reader.ReadLineAsync().WaitAsync(ReplyTimeout)
            ?? throw new IOException("QEMU closed its QMP socket");
        return JsonNode.Parse(line)?.AsObject() ?? throw new IOException($"QMP sent '{line}'");
    }

    public void Dispose()
    {
        _reader.Dispose();
        _writer.Dispose();
        _socket.Dispose();
    }
}

public sealed class QmpException(string command, string description)
    : Exception($"QMP {command}: {description}")
{
    public string Description { get; } = description;
}
