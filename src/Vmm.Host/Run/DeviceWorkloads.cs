using Vmm.Virtio.Driver.Fs;
using Vmm.Virtio.Driver.Net;

namespace Vmm.Host.Run;

/// <summary>
/// The workloads of fs and net devices (fs, fs-verify, net, and bench on fs or net): each builds
/// its guest layer from the device's guest driver and queues (<see cref="GuestDevice"/>) and guest
/// memory, and needs nothing else of the VM.
/// </summary>
public static class DeviceWorkloads
{
    /// <summary>Most READs the fs bench keeps in flight (each has its own 1 MiB buffer in guest memory).</summary>
    public const int MaxFsDepth = 64;

    public static void Run(GuestVm vm, TextWriter output, TextWriter log, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(vm);
        RunOptions o = vm.Options;
        GuestDevice device = o.Workload switch
        {
            RunWorkload.Fs or RunWorkload.FsVerify => vm.Devices.Single(d => d.Source.Kind == "fs"),
            RunWorkload.Net => vm.Devices.Single(d => d.Source.Kind == "net"),
            _ => vm.Devices[0],
        };

        if (device.Source.Kind == "fs")
        {
            var options = new VirtioFsSessionOptions
            {
                RequestTimeout = Workloads.RequestTimeout,
                MaxRequestsInFlight = o.Workload == RunWorkload.Bench ? Math.Clamp(o.IoDepth, 1, MaxFsDepth) : 4,
            };
            using var fs = new FsGuest(device, vm.Memory, vm.Allocator, options);
            switch (o.Workload)
            {
                case RunWorkload.Fs:
                    FsWorkloads.Checksum(fs, output, log);
                    break;
                case RunWorkload.FsVerify:
                    FsWorkloads.Verify(fs, output, log);
                    break;
                default:
                    FsWorkloads.WriteBench(output, o, FsWorkloads.Bench(fs, o, cancellationToken));
                    break;
            }

            return;
        }

        try
        {
            using var net = new VirtioNetDriver(device.Driver, vm.Memory, vm.Allocator);
            if (o.Workload == RunWorkload.Net)
            {
                NetWorkloads.Echo(net, o.Frames, output, log);
            }
            else
            {
                NetWorkloads.WriteBench(output, o, NetWorkloads.Bench(net, o, cancellationToken));
            }
        }
        catch (VirtioNetException e)
        {
            throw new Cli.WorkloadFailedException($"The net device failed: {e.Message}", e);
        }
    }
}
