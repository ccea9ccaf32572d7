namespace Vmm.Virtio.Spec;

/// <summary>Device status field bits (virtio 1.2, 2.1 "Device Status Field").</summary>
[Flags]
public enum VirtioDeviceStatus : byte
{
    None = 0,
    ACKNOWLEDGE = 1,
    DRIVER = 2,
    DRIVER_OK = 4,
    FEATURES_OK = 8,
    DEVICE_NEEDS_RESET = 64,
    FAILED = 128,
}
