using Microsoft.Extensions.Logging.Abstractions;
using NUnit.Framework;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using Vmm.VhostUser.Tests.Backend;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>Our front-end against our back-end on a Unix socket: a config change travels the back-end channel.</summary>
[TestFixture]
public sealed class BackendChannelDogfoodTests : AkkaTest
{
    [Test]
    public async Task Backend_config_change_raises_ConfigChanged_and_ReadConfig_returns_the_new_bytes()
    {
        DirectoryInfo directory = Directory.CreateTempSubdirectory("vmm-backendreq-");
        string socketPath = Path.Combine(directory.FullName, "dev.sock");
        var backendDevice = new ConfigurableDevice();
        using var stop = new CancellationTokenSource();
        using VhostUserBackendServer server = VhostUserBackendServer.Bind(backendDevice, socketPath, NullLogger.Instance);
        Task serving = Task.Run(() => server.RunAsync(stop.Token));
        try
        {
            var options = new VhostUserDeviceOptions(socketPath, Vmm.Virtio.Spec.VirtioDeviceId.Entropy) { ConfigSize = 8 };
            using VhostUserDevice device = await VhostUserDevice.ConnectAsync(Sys, options);
            Assert.That(device.Info.ProtocolFeatures & VhostUserProtocolFeatures.BACKEND_REQ, Is.EqualTo(VhostUserProtocolFeatures.BACKEND_REQ));

            var config = new byte[8];
            await Task.Run(() => device.ReadConfig(0, config));
            Assert.That(config, Is.EqualTo(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }));

            var changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            device.ConfigChanged += () => changed.TrySetResult();
            byte[] updated = [10, 20, 30, 40, 50, 60, 70, 80];
            backendDevice.ChangeConfig(updated);
            await changed.Task.WaitAsync(TimeSpan.FromSeconds(10));

            await Task.Run(() => device.ReadConfig(0, config));
            Assert.That(config, Is.EqualTo(updated));
            var part = new byte[2];
            await Task.Run(() => device.ReadConfig(4, part));
            Assert.That(part, Is.EqualTo(new byte[] { 50, 60 }));
        }
        finally
        {
            await stop.CancelAsync();
            try
            {
                await serving.WaitAsync(TimeSpan.FromSeconds(10));
            }
            catch (OperationCanceledException)
            {
            }

            directory.Delete(recursive: true);
        }
    }
}
