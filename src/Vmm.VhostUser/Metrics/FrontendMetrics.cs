using System.Diagnostics;
using System.Diagnostics.Metrics;
using Vmm.Virtio.Metrics;

namespace Vmm.VhostUser.Metrics;

/// <summary>
/// The vhost-user front-end's connection instruments on the <c>ManagedVmm.Frontend</c> meter
/// (<see cref="VmmMeters.Frontend"/>), all tagged <c>device</c> (the device's name, e.g.
/// <c>blk0</c>); calls the front-end proxies are counted per queue as
/// <c>vmm.frontend.queue.interrupts</c> (<see cref="VmmMeters.FrontendQueues"/>). Control path only.
/// <list type="bullet">
/// <item><c>vmm.frontend.connections</c> (Counter, <c>{connection}</c>): handshakes completed, the first and every later one.</item>
/// <item><c>vmm.frontend.reconnects</c> (Counter, <c>{connection}</c>): handshakes completed after the device had lost an earlier connection.</item>
/// <item><c>vmm.frontend.handshake.duration</c> (Histogram, <c>s</c>): from the socket connected to the device ready (negotiated and, on a reconnect, its rings replayed).</item>
/// <item><c>vmm.frontend.faults</c> (Counter, <c>{fault}</c>, also tagged <c>error.type</c>): connections that ended by an error (the back-end went away, broke the protocol, timed out), and connection attempts that failed (no socket yet: <c>FileNotFoundException</c>, <c>SocketException</c>).</item>
/// </list>
/// </summary>
public static class FrontendMetrics
{
    private static readonly Counter<long> s_connections =
        VmmMeters.Frontend.CreateCounter<long>("vmm.frontend.connections", "{connection}", "vhost-user handshakes completed.");

    private static readonly Counter<long> s_reconnects =
        VmmMeters.Frontend.CreateCounter<long>("vmm.frontend.reconnects", "{connection}", "vhost-user handshakes completed after a connection was lost.");

    private static readonly Histogram<double> s_handshake =
        VmmMeters.Frontend.CreateHistogram<double>("vmm.frontend.handshake.duration", "s", "From the socket connected to the device ready.");

    private static readonly Counter<long> s_faults =
        VmmMeters.Frontend.CreateCounter<long>("vmm.frontend.faults", "{fault}", "vhost-user connections ended by an error.");

    /// <summary>The device is ready on a connection made at <paramref name="connectedAt"/> (a <see cref="Stopwatch"/> timestamp).</summary>
    public static void Ready(string device, long connectedAt, bool reconnect)
    {
        var tag = new KeyValuePair<string, object?>(VmmMeters.DeviceTag, device);
        s_connections.Add(1, tag);
        if (reconnect)
        {
            s_reconnects.Add(1, tag);
        }

        s_handshake.Record(Stopwatch.GetElapsedTime(connectedAt).TotalSeconds, tag);
    }

    /// <summary>The device's connection, or an attempt to make one, ended by <paramref name="error"/>.</summary>
    public static void Fault(string device, Exception error) => s_faults.AddFault(device, error);
}
