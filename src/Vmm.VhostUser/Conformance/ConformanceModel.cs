using Vmm.Virtio.Spec;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Conformance;

/// <summary>How one conformance check ended.</summary>
public enum ConformanceOutcome
{
    /// <summary>The back-end did what the spec asks.</summary>
    Pass,

    /// <summary>The back-end broke a rule of the spec, or the check could not complete because of it.</summary>
    Fail,

    /// <summary>
    /// The check does not apply (a feature the back-end does not offer, a device type it is not
    /// about) or could not run (the connection was lost earlier and no new one was accepted).
    /// </summary>
    NotApplicable,
}

/// <summary>A check of the catalogue: its stable id, what it checks and where the rule comes from.</summary>
/// <param name="Id">Short stable name (<c>vring-base</c>), used in JSON output and by tests.</param>
/// <param name="Title">What is checked, in a few words.</param>
/// <param name="Spec">The section of vhost-user.rst (QEMU, docs/interop) or virtio 1.2 the rule comes from.</param>
public sealed record ConformanceCheck(string Id, string Title, string Spec);

/// <summary>The outcome of one check with one line saying why.</summary>
public sealed record ConformanceResult(ConformanceCheck Check, ConformanceOutcome Outcome, string Why)
{
    /// <summary>The check's id.</summary>
    public string Id => Check.Id;
}

/// <summary>Every check's result, in the order they ran, and what the handshake learnt.</summary>
/// <param name="Target">The socket path (or the description of the connection) that was checked.</param>
/// <param name="DeviceType">The virtio device type the back-end was checked as.</param>
/// <param name="Features">The virtio feature bits GET_FEATURES offered (null when the handshake never got that far).</param>
/// <param name="ProtocolFeatures">The protocol feature bits GET_PROTOCOL_FEATURES offered, or null.</param>
/// <param name="QueueCount">What GET_QUEUE_NUM answered, or null.</param>
/// <param name="Results">One result per check of <see cref="VhostUserConformance.ChecksFor"/>, in that order.</param>
public sealed record ConformanceReport(
    string Target,
    VirtioDeviceId DeviceType,
    ulong? Features,
    VhostUserProtocolFeatures? ProtocolFeatures,
    int? QueueCount,
    IReadOnlyList<ConformanceResult> Results)
{
    /// <summary>Checks that passed.</summary>
    public int Passed => Count(ConformanceOutcome.Pass);

    /// <summary>Checks that failed.</summary>
    public int Failed => Count(ConformanceOutcome.Fail);

    /// <summary>Checks that did not apply or could not run.</summary>
    public int NotApplicable => Count(ConformanceOutcome.NotApplicable);

    /// <summary>True when no check failed.</summary>
    public bool Succeeded => Failed == 0;

    /// <summary>The result of the check named <paramref name="id"/>.</summary>
    public ConformanceResult this[string id] =>
        Results.FirstOrDefault(r => r.Id == id) ?? throw new KeyNotFoundException($"No check '{id}' in this report.");

    private int Count(ConformanceOutcome outcome) => Results.Count(r => r.Outcome == outcome);
}

/// <summary>Settings of a conformance run.</summary>
public sealed record ConformanceOptions
{
    /// <summary>How long the back-end may take to answer a request or complete a buffer by default.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(5);

    /// <summary>The ring size QEMU gives vhost-user-blk and vhost-user-fs by default.</summary>
    public const ushort DefaultQueueSize = 128;

    /// <summary>The device type the back-end serves: selects the device checks, the config size and the request sent.</summary>
    public required VirtioDeviceId DeviceType { get; init; }

    /// <summary>
    /// How long one request may wait for its reply, and one buffer for its completion. A back-end
    /// that stays silent longer fails the check at hand (a missing REPLY_ACK, a lost kick).
    /// </summary>
    public TimeSpan Timeout { get; init; } = DefaultTimeout;

    /// <summary>Size of the rings the checker sets up (a power of two, 2 to 32768).</summary>
    public ushort QueueSize { get; init; } = DefaultQueueSize;

    /// <summary>
    /// Lets the blk write check write a pattern (and then the original data back). Without it the
    /// checker only ever writes back the bytes it has just read, so the disk never changes.
    /// </summary>
    public bool AllowWrites { get; init; }

    internal void Validate()
    {
        if (Timeout <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(Timeout), Timeout, "The timeout must be positive.");
        }

        if (QueueSize is < 2 or > VirtqueueLayout.MaxQueueSize || (QueueSize & (QueueSize - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(QueueSize), QueueSize, "The queue size must be a power of two from 2 to 32768 (virtio 1.2, 2.7).");
        }
    }
}
