using System.Net.Sockets;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Conformance;

/// <summary>
/// A conformance checker for vhost-user back-ends: connects as a front-end and a guest driver
/// would, and checks what the back-end does against vhost-user.rst (QEMU, docs/interop) and
/// virtio 1.2: the handshake, REPLY_ACK, the configuration space, the queue count, rings started,
/// stopped with GET_VRING_BASE and restarted, a kick before SET_VRING_ENABLE, the memory table
/// changed under running rings, RESET_DEVICE, STATUS, the inflight region, one real request of
/// the device type, and a second connection.
/// </summary>
/// <remarks>
/// <para>
/// It never damages data: the only writes are to a virtio-blk disk, and they write back the
/// bytes just read unless <see cref="ConformanceOptions.AllowWrites"/> lets a pattern be written
/// (then read back and replaced by the original).
/// </para>
/// <para>
/// A back-end author can run it from a test against a back-end listening on a socket:
/// <code>
/// ConformanceReport report = await VhostUserConformance.RunAsync(
///     "/tmp/blk.sock", new ConformanceOptions { DeviceType = VirtioDeviceId.Block });
/// Assert.That(report.Succeeded, string.Join('\n', report.Results));
/// </code>
/// <c>vmm check-backend SOCKET --type blk</c> prints the same report as a table or as JSON.
/// </para>
/// </remarks>
public static class VhostUserConformance
{
    /// <summary>The checks a run performs for <paramref name="deviceType"/>, in order.</summary>
    public static IReadOnlyList<ConformanceCheck> ChecksFor(VirtioDeviceId deviceType) =>
        ConformanceRun.Catalogue(deviceType).Select(c => c.Check).ToArray();

    /// <summary>
    /// Checks the back-end listening on <paramref name="socketPath"/>. The first connection must
    /// succeed: a missing socket is a <see cref="FileNotFoundException"/>, one nobody listens on an
    /// <see cref="IOException"/>. After that, whatever the back-end does ends up in the report.
    /// </summary>
    public static Task<ConformanceReport> RunAsync(string socketPath, ConformanceOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        return ConformanceRun.RunAsync(
            socketPath, options, (connectionOptions, ct) => VhostUserFrontendConnection.ConnectAsync(socketPath, connectionOptions, ct), cancellationToken);
    }

    /// <summary>
    /// Checks a back-end reached through <paramref name="connect"/>, which returns a connected
    /// AF_UNIX stream socket (a socketpair end, say) each time it is called: once at the start,
    /// and again for the second-connection check and after the back-end closed a connection.
    /// </summary>
    public static Task<ConformanceReport> RunAsync(
        Func<CancellationToken, Task<Socket>> connect, string target, ConformanceOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connect);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        return ConformanceRun.RunAsync(
            target, options,
            async (connectionOptions, ct) => VhostUserFrontendConnection.FromSocket(await connect(ct).ConfigureAwait(false), connectionOptions),
            cancellationToken);
    }
}
