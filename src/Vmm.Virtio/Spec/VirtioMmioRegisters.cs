namespace Vmm.Virtio.Spec;

/// <summary>
/// virtio-mmio register offsets, version 2 (virtio 1.2, 4.2.2 "MMIO Device Register Layout").
/// Every register below <see cref="Config"/> is 32 bits wide and little-endian.
/// </summary>
public static class VirtioMmioRegisters
{
    /// <summary>0x74726976, "virt" in little-endian ASCII (4.2.2).</summary>
    public const uint MagicValueExpected = 0x74726976;

    /// <summary>The non-legacy interface (4.2.2: "0x2"); version 1 is the legacy layout (4.2.4).</summary>
    public const uint VersionModern = 2;

    public const uint MagicValue = 0x000;
    public const uint Version = 0x004;
    public const uint DeviceId = 0x008;
    public const uint VendorId = 0x00c;
    public const uint DeviceFeatures = 0x010;
    public const uint DeviceFeaturesSel = 0x014;
    public const uint DriverFeatures = 0x020;
    public const uint DriverFeaturesSel = 0x024;
    public const uint QueueSel = 0x030;
    public const uint QueueNumMax = 0x034;
    public const uint QueueNum = 0x038;
    public const uint QueueReady = 0x044;
    public const uint QueueNotify = 0x050;
    public const uint InterruptStatus = 0x060;
    public const uint InterruptAck = 0x064;
    public const uint Status = 0x070;
    public const uint QueueDescLow = 0x080;
    public const uint QueueDescHigh = 0x084;
    public const uint QueueDriverLow = 0x090;
    public const uint QueueDriverHigh = 0x094;
    public const uint QueueDeviceLow = 0x0a0;
    public const uint QueueDeviceHigh = 0x0a4;
    public const uint ShmSel = 0x0ac;
    public const uint ShmLenLow = 0x0b0;
    public const uint ShmLenHigh = 0x0b4;
    public const uint ShmBaseLow = 0x0b8;
    public const uint ShmBaseHigh = 0x0bc;
    public const uint QueueReset = 0x0c0;
    public const uint ConfigGeneration = 0x0fc;

    /// <summary>Device-specific configuration space starts here (any access width, 4.2.2).</summary>
    public const uint Config = 0x100;

    /// <summary>InterruptStatus bit 0: "Used Buffer Notification" (4.2.2).</summary>
    public const uint InterruptUsedBuffer = 1;

    /// <summary>InterruptStatus bit 1: "Configuration Change Notification" (4.2.2).</summary>
    public const uint InterruptConfigChange = 2;
}
