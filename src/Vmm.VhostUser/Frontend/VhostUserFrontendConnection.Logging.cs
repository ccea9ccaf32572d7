using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>Dirty-page logging for live migration (vhost-user.rst, "Migration").</summary>
public sealed partial class VhostUserFrontendConnection
{
    /// <summary>
    /// True when the back-end can log the pages it writes: it offers VHOST_F_LOG_ALL (feature
    /// bit 26) and LOG_SHMFD was acked, so the log travels as a shared memfd with SET_LOG_BASE.
    /// </summary>
    public bool SupportsDirtyLogging => SupportsLogging(BackendFeatures, ProtocolFeatures);

    /// <summary>The rule of <see cref="SupportsDirtyLogging"/> for a handshake's result.</summary>
    public static bool SupportsLogging(ulong backendFeatures, VhostUserProtocolFeatures protocolFeatures) =>
        (backendFeatures & VhostUserVirtioFeatures.LOG_ALL) != 0 && (protocolFeatures & VhostUserProtocolFeatures.LOG_SHMFD) != 0;

    /// <summary>
    /// SET_LOG_BASE with the log description (mmap size, offset 0) and the log's memfd in the
    /// ancillary data (LOG_SHMFD). The back-end answers it whether or not NEED_REPLY was set, so
    /// none is set; the answer's body means nothing and is not read, as QEMU does not read it:
    /// libvhost-user (qemu-storage-daemon) echoes the first 8 bytes of the request as a "u64",
    /// DPDK sends an empty body.
    /// </summary>
    public async Task SetLogBaseAsync(DirtyPageLog log, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(log);
        RequireProtocolFeature(VhostUserProtocolFeatures.LOG_SHMFD, VhostUserRequest.SET_LOG_BASE);
        var payload = new byte[VhostUserLog.Size];
        new VhostUserLog(log.Size, 0).Write(payload);
        SafeFileDescriptor fd = log.Fd ?? throw new ArgumentException("Only a log this process created (a memfd) can be sent.", nameof(log));
        using VhostUserReply reply = await SendAndReceiveAsync(VhostUserRequest.SET_LOG_BASE, payload, [fd], cancellationToken)
            .ConfigureAwait(false);
    }

    /// <summary>
    /// SET_VRING_ADDR alone for a running ring: turns the logging of its used ring on (VHOST_VRING_F_LOG,
    /// log address <see cref="VhostUserRingAddresses.LogGuestAddress"/>) or off (null), as QEMU's
    /// vhost_dev_set_log does for every ring when migration starts and ends.
    /// </summary>
    public Task SetRingAddressAsync(VhostUserRingAddresses ring, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(ring);
        return SendAsync(VhostUserRequest.SET_VRING_ADDR, EncodeRingAddress(ring), cancellationToken: cancellationToken);
    }

    private static byte[] EncodeRingAddress(VhostUserRingAddresses ring)
    {
        uint flags = ring.LogGuestAddress is null ? 0 : VhostUserVringAddr.VHOST_VRING_F_LOG;
        var addr = new VhostUserVringAddr(
            RingIndex(ring.Index), flags, ring.DescriptorUserAddress, ring.DeviceUserAddress, ring.DriverUserAddress, ring.LogGuestAddress ?? 0);
        return Encode(addr, VhostUserVringAddr.Size);
    }
}
