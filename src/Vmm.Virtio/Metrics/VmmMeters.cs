using System.Diagnostics.Metrics;

namespace Vmm.Virtio.Metrics;

/// <summary>
/// The two meters of ManagedVmm (System.Diagnostics.Metrics), read by any
/// <see cref="MeterListener"/>, <c>dotnet-counters monitor --counters ManagedVmm.Backend</c> or
/// OpenTelemetry's <c>AddMeter("ManagedVmm.Backend")</c>. docs/metrics.md lists every instrument.
/// </summary>
/// <remarks>
/// <para><see cref="Backend"/> is the device side: every virtio device's queues, wherever the
/// device runs (<c>vmm serve</c>, or in-process in <c>vmm run --device</c>), and the vhost-user
/// back-end's sessions. <see cref="Frontend"/> is the VMM side: the guest driver's view of its
/// queues in <c>vmm run</c>, and the vhost-user front-end's connections.</para>
/// <para>Instruments are created once, here and in Vmm.VhostUser's BackendMetrics and
/// FrontendMetrics; the data path only bumps plain per-queue fields (<see cref="QueueMetrics"/>)
/// that observable instruments read when a listener asks.</para>
/// </remarks>
public static class VmmMeters
{
    /// <summary>The device side's meter name.</summary>
    public const string BackendName = "ManagedVmm.Backend";

    /// <summary>The VMM side's meter name.</summary>
    public const string FrontendName = "ManagedVmm.Frontend";

    /// <summary>Tag naming a device: the name its host gave it (<c>blk</c> for <c>vmm serve blk</c>, <c>blk0</c> in <c>vmm run</c>).</summary>
    public const string DeviceTag = "device";

    /// <summary>Tag naming a queue by its index (an int).</summary>
    public const string QueueTag = "queue";

    /// <summary>Tag naming a request's direction: <c>read</c>, <c>write</c> or <c>other</c>.</summary>
    public const string DirectionTag = "direction";

    /// <summary>Tag naming what ended a connection or a queue: the exception's type name.</summary>
    public const string ErrorTypeTag = "error.type";

    /// <summary>The device side's meter.</summary>
    public static Meter Backend { get; } = new(BackendName, "1.0");

    /// <summary>The VMM side's meter.</summary>
    public static Meter Frontend { get; } = new(FrontendName, "1.0");

    /// <summary>The device side's per-queue instruments (<c>vmm.backend.*</c>).</summary>
    public static QueueInstruments BackendQueues { get; } = new(Backend, "vmm.backend");

    /// <summary>The VMM side's per-queue instruments (<c>vmm.frontend.*</c>), as the guest driver sees its requests.</summary>
    public static QueueInstruments FrontendQueues { get; } = new(Frontend, "vmm.frontend");

    /// <summary>Counts one fault of <paramref name="device"/>, tagged with the type of <paramref name="error"/>.</summary>
    public static void AddFault(this Counter<long> faults, string device, Exception error)
    {
        ArgumentNullException.ThrowIfNull(faults);
        ArgumentNullException.ThrowIfNull(error);
        faults.Add(1, new KeyValuePair<string, object?>(DeviceTag, device), new KeyValuePair<string, object?>(ErrorTypeTag, error.GetType().Name));
    }

    /// <summary>The direction tag's value.</summary>
    public static string Name(this RequestDirection direction) => direction switch
    {
        RequestDirection.Read => "read",
        RequestDirection.Write => "write",
        _ => "other",
    };
}

/// <summary>Which way a request moved data, as the driver sees it.</summary>
public enum RequestDirection
{
    /// <summary>Data from the device into guest memory (virtio-blk IN; an entropy request).</summary>
    Read,

    /// <summary>Data from guest memory to the device (virtio-blk OUT).</summary>
    Write,

    /// <summary>Anything else (FLUSH, GET_ID, DISCARD, WRITE_ZEROES, a chain the device only reads).</summary>
    Other,
}
