using Vmm.Host.Run;
using Vmm.Virtio;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Hosting;

namespace Vmm.Interop.Tests.Harness;

/// <summary>
/// A <c>--vhost-user</c> blk device with a test's own options (timeouts, reconnect), created by
/// the VM actor in <see cref="GuestVm"/>'s Akka.Hosting tree exactly as <c>vmm run</c>'s are.
/// </summary>
sealed class HostedBlkSource(VhostUserDeviceOptions options) : IHostedDeviceSource
{
    public string Kind => "blk";

    public VirtioDeviceId DeviceId => VirtioDeviceId.Block;

    public string Name => options.Name;

    public string Where => options.SocketPath;

    public IVirtioDevice Create() => throw new InvalidOperationException("Created by the VM actor.");

    public void Configure(ManagedVmmBuilder vm) =>
        vm.AddVhostUserDevice(options.Name, options.SocketPath, options.DeviceId, _ => options);

    public IVhostUserDevice Connect(IManagedVmm vmm, CancellationToken cancellationToken = default) =>
        vmm.GetDeviceAsync(options.Name, cancellationToken).GetAwaiter().GetResult();
}
