using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;
using Vmm.Core.Posix;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;
using Vmm.Virtio.Devices.Blk;

namespace Vmm.Host.Tests.Hostile;

/// <summary>
/// An adversarial vhost-user back-end: it listens on a socket like <c>vmm serve blk</c>, and
/// behind each accepted connection runs the project's real blk back-end
/// (<see cref="VhostUserBackendServer.ServeAsync"/>) over a socketpair, passing every message
/// through a <see cref="HostileScript"/>. The script sees each request and each reply, with
/// their fds, and may forward, drop, replace or delay them, close the connection half-way,
/// send stray bytes, or reach into the memory and notifiers the front-end handed over. So a
/// case is "a good back-end up to a point, then one misbehaviour", and a well-behaved
/// connection after a misbehaving one is the real back-end again.
/// </summary>
internal sealed class HostileBackend : IDisposable
{
    private readonly Socket _listener;
    private readonly string _image;
    private readonly Func<HostileScript> _script;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<HostileLink> _links = [];
    private readonly Task _accepting;

    public HostileBackend(string socketPath, string image, Func<HostileScript> script)
    {
        SocketPath = socketPath;
        _image = image;
        _script = script;
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(socketPath));
        _listener.Listen(4);
        _accepting = Task.Run(AcceptLoopAsync);
    }

    public string SocketPath { get; }

    /// <summary>Connections accepted so far.</summary>
    public int Connections
    {
        get
        {
            lock (_links)
            {
                return _links.Count;
            }
        }
    }

    /// <summary>What the scripts noted (each line prefixed with its connection's number), for failure messages.</summary>
    public string Notes
    {
        get
        {
            lock (_links)
            {
                return string.Join('\n', _links.SelectMany(l => l.Notes.Select(n => $"#{l.Number}: {n}")));
            }
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket accepted;
            try
            {
                accepted = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }

            HostileLink link;
            lock (_links)
            {
                link = new HostileLink(_links.Count + 1, accepted, _script());
                _links.Add(link);
            }

            link.Start(_image, _stop.Token);
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        try
        {
            _accepting.Wait(TimeSpan.FromSeconds(10));
        }
        catch (AggregateException)
        {
        }

        lock (_links)
        {
            foreach (HostileLink link in _links)
            {
                link.Dispose();
            }
        }

        File.Delete(SocketPath);
        _stop.Dispose();
    }
}

/// <summary>One front-end connection through the hostile back-end, and what the front-end handed over on it.</summary>
public sealed class HostileLink : IDisposable
{
    private readonly Socket _frontendSocket;
    private readonly List<VhostUserMessage> _kept = [];
    private readonly CancellationTokenSource _end = new();
    private readonly List<Task> _tasks = [];
    private readonly Lock _lock = new();

    public HostileLink(int number, Socket frontend, HostileScript script)
    {
        Number = number;
        _frontendSocket = frontend;
        Frontend = VhostUserChannel.FromSocket(frontend);
        Script = script;
        (Proxy, BackendEnd) = VhostUserChannel.CreatePair();
    }

    /// <summary>1 for the first connection, 2 for the first reconnect, ...</summary>
    public int Number { get; }

    public HostileScript Script { get; }

    /// <summary>Our end of the front-end's connection.</summary>
    public VhostUserChannel Frontend { get; }

    /// <summary>Our end of the socketpair to the real back-end.</summary>
    public VhostUserChannel Proxy { get; }

    private VhostUserChannel BackendEnd { get; }

    /// <summary>Ends when the connection does: background mischief stops with it.</summary>
    public CancellationToken Ended => _end.Token;

    public List<string> Notes { get; } = [];

    /// <summary>Guest memory regions the front-end sent (SET_MEM_TABLE or ADD_MEM_REG), with their fds.</summary>
    public List<(VhostUserMemoryRegion Region, SafeFileDescriptor Fd)> Regions { get; } = [];

    /// <summary>SET_VRING_ADDR per ring index.</summary>
    public Dictionary<uint, VhostUserVringAddr> RingAddresses { get; } = [];

    /// <summary>SET_VRING_NUM per ring index.</summary>
    public Dictionary<uint, uint> RingSizes { get; } = [];

    public void Note(string text)
    {
        lock (Notes)
        {
            Notes.Add(text);
        }
    }

    public void Start(string image, CancellationToken stop)
    {
        CancellationToken token = CancellationTokenSource.CreateLinkedTokenSource(stop, _end.Token).Token;
        var device = new VirtioBlkDevice(new VirtioBlkOptions(image));
        lock (_lock)
        {
            _tasks.Add(Task.Run(async () =>
            {
                try
                {
                    await VhostUserBackendServer.ServeAsync(device, BackendEnd, NullLogger.Instance, null, token).ConfigureAwait(false);
                }
                finally
                {
                    device.Dispose();
                }
            }));
            _tasks.Add(Task.Run(() => PumpAsync(toBackend: true, token)));
            _tasks.Add(Task.Run(() => PumpAsync(toBackend: false, token)));
        }
    }

    /// <summary>Runs <paramref name="work"/> until the connection ends (a storm, a poller).</summary>
    public void Background(Func<CancellationToken, Task> work)
    {
        lock (_lock)
        {
            _tasks.Add(Task.Run(async () =>
            {
                try
                {
                    await work(_end.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                }
                catch (Exception e) when (e is VhostUserConnectionLostException or IOException or ObjectDisposedException or SocketException)
                {
                    Note($"background work ended: {e.Message}");
                }
            }));
        }
    }

    private async Task PumpAsync(bool toBackend, CancellationToken token)
    {
        VhostUserChannel from = toBackend ? Frontend : Proxy;
        VhostUserChannel to = toBackend ? Proxy : Frontend;
        try
        {
            while (!token.IsCancellationRequested)
            {
                VhostUserMessage message = await from.ReceiveAsync(token).ConfigureAwait(false);
                bool keep = false;
                try
                {
                    if (toBackend)
                    {
                        keep = Record(message);
                    }

                    bool handled = toBackend
                        ? await Script.OnRequestAsync(this, message).ConfigureAwait(false)
                        : await Script.OnReplyAsync(this, message).ConfigureAwait(false);
                    if (!handled)
                    {
                        await to.SendAsync(message.Header, message.Payload, message.Fds, token).ConfigureAwait(false);
                    }
                }
                finally
                {
                    if (!keep)
                    {
                        message.Dispose();
                    }
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or VhostUserConnectionLostException or VhostUserProtocolException or IOException or ObjectDisposedException or SocketException)
        {
            Note($"{(toBackend ? "front-end" : "back-end")} side ended: {e.GetType().Name}: {e.Message}");
        }
        finally
        {
            Close();
        }
    }

    /// <summary>Notes what the front-end hands over; true when the message (and so its fds) is kept for the link's life.</summary>
    private bool Record(VhostUserMessage message)
    {
        ReadOnlySpan<byte> payload = message.Payload.Span;
        switch ((VhostUserRequest)message.Header.Request)
        {
            case VhostUserRequest.SET_MEM_TABLE when payload.Length >= VhostUserMemoryHeader.Size:
                uint n = VhostUserMemoryHeader.Read(payload).NRegions;
                for (int i = 0; i < n && i < message.Fds.Count; i++)
                {
                    Regions.Add((VhostUserMemoryRegion.Read(payload[(VhostUserMemoryHeader.Size + (i * VhostUserMemoryRegion.Size))..]), message.Fds[i]));
                }

                KeepMessage(message);
                return true;
            case VhostUserRequest.ADD_MEM_REG when payload.Length >= 8 + VhostUserMemoryRegion.Size && message.Fds.Count == 1:
                Regions.Add((VhostUserMemoryRegion.Read(payload[8..]), message.Fds[0]));
                KeepMessage(message);
                return true;
            case VhostUserRequest.SET_VRING_ADDR when payload.Length >= VhostUserVringAddr.Size:
                VhostUserVringAddr addr = VhostUserVringAddr.Read(payload);
                RingAddresses[addr.Index] = addr;
                return false;
            case VhostUserRequest.SET_VRING_NUM when payload.Length >= VhostUserVringState.Size:
                VhostUserVringState num = VhostUserVringState.Read(payload);
                RingSizes[num.Index] = num.Num;
                return false;
            default:
                return false;
        }
    }

    private void KeepMessage(VhostUserMessage message)
    {
        lock (_kept)
        {
            _kept.Add(message);
        }
    }

    /// <summary>The memfd and offset behind a front-end user address, as a back-end would map it.</summary>
    public (SafeFileHandle File, long Offset) Translate(ulong userAddress)
    {
        foreach ((VhostUserMemoryRegion region, SafeFileDescriptor fd) in Regions)
        {
            if (userAddress >= region.UserspaceAddr && userAddress - region.UserspaceAddr < region.MemorySize)
            {
                return (new SafeFileHandle(fd.DangerousGetHandle(), ownsHandle: false), (long)(region.MmapOffset + userAddress - region.UserspaceAddr));
            }
        }

        throw new InvalidOperationException($"0x{userAddress:x} is in no region the front-end sent.");
    }

    /// <summary>Writes raw bytes on the front-end's connection: stray data, half a message.</summary>
    public void SendRaw(ReadOnlySpan<byte> bytes) => _frontendSocket.Send(bytes);

    /// <summary>Acks a request with <paramref name="status"/> ourselves (the real back-end never sees it).</summary>
    public ValueTask AckAsync(VhostUserMessage request, ulong status = 0) =>
        Frontend.SendAsync(VhostUserCodec.ReplyHeader((VhostUserRequest)request.Header.Request, 8), BitConverter.GetBytes(status));

    /// <summary>Ends the connection on both sides.</summary>
    public void Close()
    {
        try
        {
            _end.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }

        try
        {
            _frontendSocket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        Proxy.Dispose();
    }

    public void Dispose()
    {
        Close();
        Task[] tasks;
        lock (_lock)
        {
            tasks = [.. _tasks];
        }

        try
        {
            Task.WaitAll(tasks, TimeSpan.FromSeconds(10));
        }
        catch (AggregateException)
        {
        }

        Frontend.Dispose();
        BackendEnd.Dispose();
        lock (_kept)
        {
            foreach (VhostUserMessage m in _kept)
            {
                m.Dispose();
            }
        }

        _end.Dispose();
    }
}

/// <summary>
/// One misbehaviour. The default forwards everything; a case overrides what it twists and
/// returns true for a message it dealt with itself (the real back-end or front-end then never sees it).
/// </summary>
public class HostileScript
{
    public virtual ValueTask<bool> OnRequestAsync(HostileLink link, VhostUserMessage request) => ValueTask.FromResult(false);

    public virtual ValueTask<bool> OnReplyAsync(HostileLink link, VhostUserMessage reply) => ValueTask.FromResult(false);
}

/// <summary>A script built from two delegates.</summary>
public sealed class DelegateScript(
    Func<HostileLink, VhostUserMessage, ValueTask<bool>>? onRequest = null,
    Func<HostileLink, VhostUserMessage, ValueTask<bool>>? onReply = null) : HostileScript
{
    public override ValueTask<bool> OnRequestAsync(HostileLink link, VhostUserMessage request) =>
        onRequest?.Invoke(link, request) ?? ValueTask.FromResult(false);

    public override ValueTask<bool> OnReplyAsync(HostileLink link, VhostUserMessage reply) =>
        onReply?.Invoke(link, reply) ?? ValueTask.FromResult(false);
}

/// <summary>Raw eventfd access for the scripts (a saturated counter, a storm of signals).</summary>
internal static class RawEventFd
{
    /// <summary>Writes <paramref name="value"/> to an eventfd through write(2); false when it would block (counter full).</summary>
    public static bool TryAdd(SafeHandle fd, ulong value)
    {
        using var file = new FileStream(new SafeFileHandle(fd.DangerousGetHandle(), ownsHandle: false), FileAccess.ReadWrite, 0);
        try
        {
            file.Write(BitConverter.GetBytes(value));
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Reads (resets) an eventfd's counter; false when it was zero.</summary>
    public static bool TryDrain(SafeHandle fd)
    {
        using var file = new FileStream(new SafeFileHandle(fd.DangerousGetHandle(), ownsHandle: false), FileAccess.ReadWrite, 0);
        try
        {
            return file.Read(new byte[8]) == 8;
        }
        catch (IOException)
        {
            return false;
        }
    }
}
