using Vmm.Virtio.Spec;

namespace Vmm.VhostUser.Conformance;

/// <summary>A check of the catalogue and the method that runs it.</summary>
internal sealed record CheckDefinition(ConformanceCheck Check, Func<ConformanceRun, CancellationToken, Task<Verdict>> Run);

internal sealed partial class ConformanceRun
{
    private const string Spec = "vhost-user.rst";

    /// <summary>
    /// The checks for <paramref name="deviceType"/>, in the order they run: protocol checks first,
    /// then the rings, the device's requests and the ring lifecycle, then what has cost lenient
    /// back-ends their connection (a second GET_VRING_BASE, an out-of-range GET_CONFIG), the
    /// REPLY_ACK summary, and last whether a second connection is accepted. One-shot back-ends
    /// (they exit when their first front-end leaves) thus answer every other check first.
    /// </summary>
    public static IReadOnlyList<CheckDefinition> Catalogue(VirtioDeviceId deviceType)
    {
        DeviceProbe probe = DeviceProbe.For(deviceType);
        var checks = new List<CheckDefinition>
        {
            Define("handshake", "Handshake in the spec's order", $"{Spec} \"Communication\", \"Protocol features\"", (r, ct) => r.CheckHandshakeAsync(ct)),
            Define("protocol-features", "VHOST_USER_F_PROTOCOL_FEATURES offered", $"{Spec} \"Communication\"", (r, ct) => r.CheckProtocolFeaturesAsync(ct)),
            Define("config-sizes", "GET_CONFIG answers the size asked", $"{Spec} VHOST_USER_GET_CONFIG", (r, ct) => r.CheckConfigSizesAsync(ct)),
            Define("config-offset", "GET_CONFIG honours the offset", $"{Spec} \"Virtio device config space\"", (r, ct) => r.CheckConfigOffsetAsync(ct)),
            Define("queue-num", "GET_QUEUE_NUM agrees with MQ and the device", $"{Spec} \"Multiple queue support\"", (r, ct) => r.CheckQueueNumAsync(ct)),
            Define("inflight", "Inflight region shape", $"{Spec} \"Inflight I/O tracking\"", (r, ct) => r.CheckInflightAsync(ct)),
            Define("ring-start", "Rings set up, started and enabled", $"{Spec} \"Ring states\"", (r, ct) => r.CheckRingStartAsync(ct)),
            Define("status", "SET_STATUS / GET_STATUS", $"{Spec} VHOST_USER_SET_STATUS; virtio 1.2 §2.1", (r, ct) => r.CheckStatusAsync(ct)),
            Define("request", probe.RequestTitle, probe.RequestSpec, (r, ct) => r.CheckRequestAsync(ct)),
        };

        if (deviceType == VirtioDeviceId.Block)
        {
            checks.Add(Define("blk-write", "A blk write that leaves the disk as it was", "virtio 1.2 §5.2.6", (r, ct) => r.CheckBlkWriteAsync(ct)));
        }

        checks.AddRange(
        [
            Define("config-write", "SET_CONFIG of a writable field", $"{Spec} VHOST_USER_SET_CONFIG; virtio 1.2 §5.2.4", (r, ct) => r.CheckConfigWriteAsync(ct)),
            Define("mem-replace", "Memory table replaced under running rings", $"{Spec} \"Ring states\", VHOST_USER_SET_MEM_TABLE", (r, ct) => r.CheckMemReplaceAsync(ct)),
            Define("mem-slots", "ADD_MEM_REG / REM_MEM_REG under running rings", $"{Spec} VHOST_USER_ADD_MEM_REG, VHOST_USER_REM_MEM_REG", (r, ct) => r.CheckMemSlotsAsync(ct)),
            Define("vring-base", "GET_VRING_BASE stops the ring and returns its index and base", $"{Spec} \"Ring states\", VHOST_USER_GET_VRING_BASE", (r, ct) => r.CheckVringBaseAsync(ct)),
            Define("restart", "Ring restarted on the same connection", $"{Spec} \"Ring states\"", (r, ct) => r.CheckRestartAsync(ct)),
            Define("kick-before-enable", "A kick before SET_VRING_ENABLE is not lost", $"{Spec} \"Ring states\"", (r, ct) => r.CheckKickBeforeEnableAsync(ct)),
            Define("reset-device", "RESET_DEVICE, then the device set up again", $"{Spec} VHOST_USER_RESET_DEVICE", (r, ct) => r.CheckResetDeviceAsync(ct)),
            Define("vring-base-twice", "GET_VRING_BASE of a stopped ring answers the same", $"{Spec} \"Ring states\", VHOST_USER_GET_VRING_BASE", (r, ct) => r.CheckVringBaseTwiceAsync(ct)),
            Define("config-bounds", "GET_CONFIG beyond the structure: same size or error", $"{Spec} VHOST_USER_GET_CONFIG", (r, ct) => r.CheckConfigBoundsAsync(ct)),
            Define("reply-ack", "Every NEED_REPLY acked", $"{Spec} \"VHOST_USER_PROTOCOL_F_REPLY_ACK\"", (r, ct) => r.CheckReplyAckAsync(ct)),
            Define("second-connection", "A second connection accepted after the first closes", $"{Spec} \"Communication\"", (r, ct) => r.CheckSecondConnectionAsync(ct)),
        ]);
        return checks;
    }

    private static CheckDefinition Define(string id, string title, string spec, Func<ConformanceRun, CancellationToken, Task<Verdict>> run) =>
        new(new ConformanceCheck(id, title, spec), run);
}
